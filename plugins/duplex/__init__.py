"""Full-duplex speech-to-speech models (NeMo speechlm2's DuplexS2SModel): the ``codec`` and ``speech_head`` kinds,
their components and the ``duplex_s2s`` architecture, registered exactly as a third-party plugin would."""
