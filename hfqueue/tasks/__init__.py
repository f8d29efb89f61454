"""Tasks, one module per task family, looked up by name or alias.

Adding a task: write a :class:`~hfqueue.tasks.base.Task` subclass in its own module and list it
in ``_TASKS`` below.
"""

from __future__ import annotations

from hfqueue.tasks.base import Task
from hfqueue.tasks.embeddings import FeatureExtraction
from hfqueue.tasks.fill_mask import FillMask
from hfqueue.tasks.image_classification import ImageClassification
from hfqueue.tasks.question_answering import QuestionAnswering
from hfqueue.tasks.seq2seq import Summarization, Text2TextGeneration, Translation
from hfqueue.tasks.speech_recognition import SpeechRecognition
from hfqueue.tasks.text_classification import TextClassification
from hfqueue.tasks.text_generation import TextGeneration
from hfqueue.tasks.token_classification import TokenClassification
from hfqueue.tasks.zero_shot import ZeroShotClassification

_TASKS: tuple[Task, ...] = (
    TextClassification(), TokenClassification(), ZeroShotClassification(), FeatureExtraction(), FillMask(),
    TextGeneration(), Summarization(), Translation(), Text2TextGeneration(), QuestionAnswering(),
    ImageClassification(), SpeechRecognition(),
)
_BY_NAME: dict[str, Task] = {}
for _task in _TASKS:
    for _name in (_task.name, *_task.aliases):
        _BY_NAME[_name] = _task


def names() -> list[str]:
    """Canonical names of the tasks hfqueue runs."""
    return [a.name for a in _TASKS]


def known_names() -> list[str]:
    """Every task name and alias a spec may give, sorted."""
    return sorted(_BY_NAME)


def canonical_name(name: str) -> str:
    """The canonical name of a task or alias; ValueError naming the known tasks when unknown."""
    try:
        return _BY_NAME[name].name
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}") from None


def get(name: str) -> Task:
    """The task for a task name or alias."""
    return _BY_NAME[canonical_name(name)]
