"""Speech out of the discrete-unit cards (SpeechGPT, VoxtLM, SPIRIT-LM): the ``vocoder`` kind, the ``unit_hifigan``
component and the ``unit_speechlm`` architecture, registered exactly as a third-party plugin would."""
