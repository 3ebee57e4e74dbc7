"""``slmzoo serve``: an OpenAI-compatible HTTP server for any card or trained model.

One :class:`~slmzoo.serving.scheduler.Scheduler` thread owns the model and decodes with continuous batching;
the FastAPI app (:mod:`slmzoo.serving.app`) validates requests, enforces the limits
(:mod:`slmzoo.serving.limits`), decodes audio (:mod:`slmzoo.serving.audio_input`) and speaks OpenAI's wire shapes
(:mod:`slmzoo.serving.schemas`). Needs the ``serve`` extra: ``pip install "slmzoo[serve]"``.
"""
