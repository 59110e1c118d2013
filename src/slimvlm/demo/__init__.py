"""The slimvlm demo: deterministic synthetic scenes and questions (:mod:`slimvlm.demo.scenes`), a small LLaVA
with the real DINOv2-S/14 tower trained on them (:mod:`~slimvlm.demo.model`, :mod:`~slimvlm.demo.train`; the
trained weights ship in ``weights/``), ``slimvlm demo`` (:mod:`~slimvlm.demo.app`) and the accuracy-vs-tokens
comparison ``slimvlm eval`` (:mod:`~slimvlm.demo.evaluate`). Only :mod:`scenes` is imported eagerly (no
transformers import)."""

from .scenes import QA, VOCAB, Scene, SceneObject, answer_space, make_scene, questions, split_seeds, tokenize

__all__ = ["QA", "VOCAB", "Scene", "SceneObject", "answer_space", "make_scene", "questions", "split_seeds", "tokenize"]
