"""Audio files in common formats, rates and channel layouts; unreadable files are named."""

import numpy as np
import pytest
import soundfile as sf

from slmzoo.audio import AudioError, as_waveform, pad_waveforms, read_audio


def _tone(rate, seconds=0.5, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,rate", [("WAV", 16000), ("FLAC", 44100), ("OGG", 22050), ("WAV", 8000)])
def test_reads_and_resamples(tmp_path, fmt, rate):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, _tone(rate), rate, format=fmt)
    wave = read_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 8000) <= 2
    # the tone survives resampling: dominant frequency stays at 440 Hz
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 5


def test_stereo_is_averaged(tmp_path):
    left, right = _tone(16000), np.zeros(8000, dtype=np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000)
    np.testing.assert_allclose(read_audio(path), (left + right) / 2, atol=1e-4)


def test_offset_and_duration(tmp_path):
    wave = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path, offset=0.25, duration=0.5), wave[4000:12000], atol=1e-6)


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "broken.flac"
    path.write_bytes(b"this is not audio")
    with pytest.raises(AudioError, match="broken.flac"):
        read_audio(path)
    with pytest.raises(AudioError, match="missing.wav: no such audio file"):
        read_audio(tmp_path / "missing.wav")


def test_empty_and_nan_arrays_are_refused():
    with pytest.raises(AudioError, match="empty"):
        as_waveform(np.zeros(0), 16000)
    with pytest.raises(AudioError, match="NaN"):
        as_waveform(np.array([0.0, np.nan]), 16000)


def test_array_input_resampled_and_padded():
    wave = as_waveform(_tone(8000), 16000, source_rate=8000)
    assert abs(len(wave) - 8000) <= 2
    audio, lengths = pad_waveforms([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert audio.shape == (2, 5) and lengths.tolist() == [3, 5] and audio[0, 3:].abs().sum() == 0
