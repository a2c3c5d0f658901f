"""Course helpers: flashcards and quizzes, predictions, the live transformer explorer, attention views, objective
coverage, the grader (`bloomlib grade`)."""
from bloomlib.course.explorer import Explorer
from bloomlib.course.figures import AccessibleFigure, architecture_figure, with_alt_text
from bloomlib.course.objectives import BLOOM_LEVELS, coverage, objective_problems
from bloomlib.course.prediction import Prediction
from bloomlib.course.quiz import Flashcards, Question, Quiz
from bloomlib.course.viz import head_view, inline_js_libraries, model_view, plot_attention

__all__ = ["AccessibleFigure", "BLOOM_LEVELS", "Explorer", "Flashcards", "Prediction", "Question", "Quiz",
           "architecture_figure", "coverage", "head_view", "inline_js_libraries", "model_view", "objective_problems",
           "plot_attention", "with_alt_text"]
