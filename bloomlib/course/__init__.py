"""Course helpers: flashcards and quizzes, predictions, attention views, objective coverage, the grader
(`bloomlib grade`)."""
from bloomlib.course.objectives import BLOOM_LEVELS, coverage, objective_problems
from bloomlib.course.prediction import Prediction
from bloomlib.course.quiz import Flashcards, Question, Quiz
from bloomlib.course.viz import head_view, inline_js_libraries, model_view, plot_attention

__all__ = ["BLOOM_LEVELS", "Flashcards", "Prediction", "Question", "Quiz", "coverage", "head_view",
           "inline_js_libraries", "model_view", "objective_problems", "plot_attention"]
