"""Course helpers: flashcards and quizzes, predictions, the live transformer explorer, attention views, objective
coverage, the grader (`bloomlib grade`), figures with alt text (`show_figures_with_alt_text()`)."""
from bloomlib.course.alt_text import describe_figure, show_figures_with_alt_text
from bloomlib.course.explorer import Explorer
from bloomlib.course.figures import AccessibleFigure, architecture_figure, with_alt_text
from bloomlib.course.objectives import BLOOM_LEVELS, coverage, objective_problems
from bloomlib.course.prediction import Prediction
from bloomlib.course.quiz import Flashcards, Question, Quiz
from bloomlib.course.viz import head_view, inline_js_libraries, model_view, plot_attention

__all__ = ["AccessibleFigure", "BLOOM_LEVELS", "Explorer", "Flashcards", "Prediction", "Question", "Quiz",
           "architecture_figure", "coverage", "describe_figure", "head_view", "inline_js_libraries", "model_view",
           "objective_problems", "plot_attention", "show_figures_with_alt_text", "with_alt_text"]
