"""Course helpers: flashcards and quizzes, predictions, attention views, the grader (`bloomlib grade`)."""
from bloomlib.course.prediction import Prediction
from bloomlib.course.quiz import Flashcards, Question, Quiz
from bloomlib.course.viz import head_view, inline_js_libraries, model_view, plot_attention

__all__ = ["Flashcards", "Prediction", "Question", "Quiz", "head_view", "inline_js_libraries", "model_view",
           "plot_attention"]
