#!/bin/sh
# The course image's server command (deploy/Dockerfile, deploy/kubernetes/values.yaml): prepare the user's home
# (course copy at first start, Jupyter and nbgrader config for their role), then start their Jupyter server.
set -e
python /opt/course/deploy/classroom.py
exec jupyterhub-singleuser "$@"
