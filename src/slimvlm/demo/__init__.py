"""The slimvlm demo: deterministic synthetic scenes and questions (:mod:`slimvlm.demo.scenes`)."""

from .scenes import QA, VOCAB, Scene, SceneObject, answer_space, make_scene, questions, split_seeds, tokenize

__all__ = ["QA", "VOCAB", "Scene", "SceneObject", "answer_space", "make_scene", "questions", "split_seeds", "tokenize"]
