"""A full ``save_pretrained`` stands alone: every encoder loaded from a local checkpoint rebuilds without it.

Each case saves a tiny checkpoint whose feature settings differ from the defaults (so settings read from the source
matter), builds the salm tiny card on it, saves the model, moves the checkpoint away, and loads the save again:
the encoder's output must be the same, bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
import yaml

import slmzoo
from tests.test_ast_clap import AST_CONFIG, CLAP_AUDIO, CLAP_FE
from tests.test_beats import TINY as BEATS
from tests.test_conformer_encoder import FAST, W2C
from tests.test_ssl_encoders import TINY as SSL
from tests.test_whisper_encoder import TINY as WHISPER

pytestmark = pytest.mark.usefixtures("one_thread")


def whisper(root):
    tf.WhisperModel(tf.WhisperConfig(**WHISPER)).save_pretrained(root / "whisper")
    return {"type": "whisper", "pretrained": str(root / "whisper")}


def hubert(root):
    tf.HubertModel(tf.HubertConfig(**SSL)).save_pretrained(root / "hubert")
    tf.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(root / "hubert")  # the default is True
    return {"type": "hubert", "pretrained": str(root / "hubert")}


def fastconformer(root):
    tf.ParakeetEncoder(tf.ParakeetEncoderConfig(**FAST)).save_pretrained(root / "parakeet")
    tf.ParakeetFeatureExtractor(feature_size=16, hop_length=128, preemphasis=0.9).save_pretrained(root / "parakeet")
    return {"type": "conformer", "pretrained": str(root / "parakeet")}


def wav2vec2_conformer(root):
    tf.Wav2Vec2ConformerModel(tf.Wav2Vec2ConformerConfig(**W2C)).save_pretrained(root / "w2c")
    tf.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(root / "w2c")
    return {"type": "conformer", "variant": "wav2vec2_conformer", "pretrained": str(root / "w2c")}


def ast(root):
    tf.ASTModel(tf.ASTConfig(**AST_CONFIG)).save_pretrained(root / "ast")
    tf.ASTFeatureExtractor(num_mel_bins=32, max_length=100, mean=-3.0, std=4.0).save_pretrained(root / "ast")
    return {"type": "ast", "pretrained": str(root / "ast"), "output": "frames"}


def clap(root):
    tf.ClapAudioModel(tf.ClapAudioConfig(**CLAP_AUDIO)).save_pretrained(root / "clap")
    tf.ClapFeatureExtractor(**CLAP_FE, truncation="rand_trunc").save_pretrained(root / "clap")
    return {"type": "clap", "pretrained": str(root / "clap")}


def beats(root):
    from slmzoo.builder import BuildContext
    from slmzoo_plugins.encoders.beats import BEATsEncoder
    from slmzoo_plugins.encoders.specs import BEATsOptions

    encoder = BEATsEncoder(BEATsOptions(config=BEATS), BuildContext(card=None))
    torch.save({"cfg": BEATS, "model": dict(encoder.model.state_dict())}, root / "beats.pt")
    return {"type": "beats", "pretrained": str(root / "beats.pt")}


def multi(root):
    return {"type": "multi", "encoders": [whisper(root), beats(root)]}


@pytest.mark.parametrize("make", [whisper, hubert, fastconformer, wav2vec2_conformer, ast, clap, beats, multi],
                         ids=lambda f: f.__name__)
def test_full_save_rebuilds_without_the_encoder_checkpoint(tmp_path, make):
    torch.manual_seed(0)
    source = tmp_path / "source"
    source.mkdir()
    block = make(source)
    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[f"encoder={json.dumps(block)}"])).eval()
    rate = model.encoder.sampling_rate
    audio = torch.randn(2, rate) * 0.1
    lengths = torch.tensor([rate, rate * 3 // 4])
    with torch.no_grad():
        before = model.encoder(audio, lengths).hidden
    model.save_pretrained(tmp_path / "saved")
    source.rename(tmp_path / "gone")  # neither the checkpoint nor its preprocessor_config.json is there any more

    card = yaml.safe_load((tmp_path / "saved" / "card.yaml").read_text())
    assert "pretrained: " + str(source) not in (tmp_path / "saved" / "card.yaml").read_text()
    info = json.loads((tmp_path / "saved" / "slmzoo.json").read_text())
    expected = [b["pretrained"] for b in block["encoders"]] if block["type"] == "multi" else block["pretrained"]
    assert info["sources"] == {"encoder": expected}
    again = slmzoo.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        after = again.encoder(audio, lengths).hidden
    assert torch.equal(before, after)
    assert card["encoder"].get("pretrained") is None


def test_settings_read_from_the_source_are_written_into_the_card(tmp_path):
    block = fastconformer(tmp_path)
    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[f"encoder={json.dumps(block)}"]))
    options = model.encoder.standalone_options()
    assert options["feature_extractor"]["hop_length"] == 128 and options["feature_extractor"]["preemphasis"] == 0.9
    assert options["config"]["hidden_size"] == FAST["hidden_size"]
    ssl = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[f"encoder={json.dumps(hubert(tmp_path))}"]))
    assert ssl.encoder.standalone_options()["normalize"] is False


def test_a_trainable_only_save_keeps_naming_its_sources(tmp_path):
    block = hubert(tmp_path)
    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[f"encoder={json.dumps(block)}"]))
    model.save_pretrained(tmp_path / "saved", trainable_only=True)
    card = yaml.safe_load((tmp_path / "saved" / "card.yaml").read_text())
    assert card["encoder"]["pretrained"] == block["pretrained"]  # the frozen weights still come from there
    assert "sources" not in json.loads((tmp_path / "saved" / "slmzoo.json").read_text())


def test_a_misspelt_feature_setting_is_an_error_not_ignored(tmp_path):
    block = {**fastconformer(tmp_path), "feature_extractor": {"hop_lenght": 128}}
    with pytest.raises(ValueError, match="unknown setting.*hop_lenght.*known: feature_size"):
        slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[f"encoder={json.dumps(block)}"]))
