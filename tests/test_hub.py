"""The Hugging Face Hub: sources, push, pull, loading, the model card, errors.

The real ``huggingface_hub`` client talks to :mod:`tests.hub_server` on 127.0.0.1 (``HF_ENDPOINT`` and the client's
constants point at it; each test has its own cache and token file in a temporary folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import slmzoo
from slmzoo import saving
from slmzoo.cli.main import app
from slmzoo.hub import HubError, HubSource, NotAnSlmzooModelError, parse, parse_pretrained, parse_repo, snapshot
from tests.fakes import tiny_model_card, write_corpus
from tests.hub_server import HubServer

ALICE, BOB = "hf_alice_token", "hf_bob_token"
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    with HubServer({ALICE: ("alice", {"org"}), BOB: ("bob", set())}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_TOKEN", ALICE)
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # conftest makes every other test offline
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)  # the client reads these at import
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
        use_cache(monkeypatch, tmp_path / "hf" / "hub")
        yield server


def use_cache(monkeypatch, folder: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))


def offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def cli(*args: str):
    return runner.invoke(app, list(args))


def texts(model, clips, **options) -> list[str]:
    return model.generate(audio=clips, sampling_rate=16000, max_new_tokens=6, **options)


def outputs(model, clips) -> tuple[list[str], float]:
    """What a model says and its loss on a fixed transcript: a barely trained model may say nothing at all, its
    loss still tells every weight apart."""
    with torch.no_grad():
        loss = model(model.prepare_batch(clips, None, ["one two three"] * len(clips))).loss.item()
    return texts(model, clips), loss


# -- sources ---------------------------------------------------------------------------------------------
def test_source_rules(tmp_path):
    assert parse("hf-hub:org/name@v1") == HubSource("org/name", "v1")
    assert parse("hf-hub:org/name") == HubSource("org/name", None)
    assert parse(f"local-dir:{tmp_path}") == tmp_path
    assert parse("org/name") is None and parse("salm") is None  # the CLI: bare arguments are paths or cards
    assert parse_pretrained("org/name@main") == HubSource("org/name", "main")  # from_pretrained: a repo id ...
    assert parse_pretrained(str(tmp_path)) == tmp_path  # ... unless the path exists
    (tmp_path / "org" / "name").mkdir(parents=True)
    os.chdir(tmp_path)
    try:
        assert parse_pretrained("org/name") == Path("org/name")
    finally:
        os.chdir(REPO)
    with pytest.raises(HubError, match="not a Hub repository"):
        parse_repo("hf-hub:no-slash")


def test_server_speaks_the_client_protocol(hub):
    """resolve with HEAD (X-Repo-Commit, ETag, size) and GET, at a branch, a tag and a sha; 401 / 403 / 404."""
    from huggingface_hub import HfApi, errors, get_hf_file_metadata, hf_hub_download, hf_hub_url

    api = HfApi()
    api.create_repo("org/files")
    first = api.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id="org/files",
                            commit_message="one").oid
    api.create_branch("org/files", branch="dev")
    api.create_tag("org/files", tag="v1")
    api.upload_file(path_or_fileobj=b"two!", path_in_repo="a.txt", repo_id="org/files", commit_message="two")
    meta = get_hf_file_metadata(hf_hub_url("org/files", "a.txt", revision="dev"))
    assert (meta.commit_hash, meta.size) == (first, 3) and meta.etag
    for revision, content in (("dev", b"one"), ("v1", b"one"), (first, b"one"), ("main", b"two!")):
        assert Path(hf_hub_download("org/files", "a.txt", revision=revision)).read_bytes() == content
    assert ("HEAD", "/org/files/resolve/dev/a.txt") in hub.requests
    with pytest.raises(errors.RevisionNotFoundError):
        hf_hub_download("org/files", "a.txt", revision="nope")
    with pytest.raises(errors.RemoteEntryNotFoundError):
        hf_hub_download("org/files", "b.txt")
    with pytest.raises(errors.HfHubHTTPError, match="403"):
        HfApi(token=BOB).upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="org/files", commit_message="x")
    with pytest.raises(errors.HfHubHTTPError, match="401"):
        HfApi(token=False).create_repo("org/other")


# -- round trip ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=8)


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    """A tiny card trained for a few steps, evaluated (its result kept in RUN/eval/), with a curves plot."""
    from slmzoo.training.loop import RunOptions, train

    run = tmp_path_factory.mktemp("run") / "run"
    card = tiny_model_card("train.max_duration=3", "train.max_steps=3", "train.checkpoint_every=3", "train.lr=3e-3")
    train(card, RunOptions(train=[str(corpus)], out=run, progress=False))
    result = cli("eval", str(run), "--data", str(corpus), "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert cli("plot", str(run)).exit_code == 0
    return run


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A saved tiny model (no training): what the push options and errors are tried on."""
    return slmzoo.build(tiny_model_card()).save_pretrained(tmp_path_factory.mktemp("saved") / "tiny")


@pytest.mark.slow
def test_push_pull_generate_round_trip(hub, trained_run, corpus, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    clips = [str(p) for p in sorted((corpus.parent / "audio").glob("*.flac"))[:2]]
    local = slmzoo.from_pretrained(saving_folder(trained_run))
    expected = outputs(local, clips)

    result = cli("push", str(trained_run), "org/tiny", "--license", "apache-2.0", "--language", "en")
    assert result.exit_code == 0, result.output
    files = set(HfApi().list_repo_files("org/tiny"))
    assert {"card.yaml", "model.safetensors", "slmzoo.json", "README.md", "curves.png"} <= files
    assert not any(f.endswith((".pt", ".bin")) for f in files)  # no optimizer state, no pickles
    readme = Path(snapshot("org/tiny", allow_patterns=["README.md"])) / "README.md"

    use_cache(monkeypatch, tmp_path / "empty-cache")
    pulled = cli("pull", "org/tiny")
    assert pulled.exit_code == 0, pulled.output
    assert outputs(slmzoo.from_pretrained("hf-hub:org/tiny"), clips) == expected
    offline(monkeypatch)
    assert outputs(slmzoo.from_pretrained("hf-hub:org/tiny@main"), clips) == expected  # from the cache
    generated = cli("generate", "hf-hub:org/tiny", "--audio", clips[0], "--json", "--max-new-tokens", "6")
    assert generated.exit_code == 0, generated.output
    assert json.loads(generated.stdout)[0]["text"] == expected[0][0]

    card = ModelCard.load(readme)
    data = card.data
    assert data.library_name == "slmzoo" and data.pipeline_tag == "automatic-speech-recognition"  # salm: asr only
    assert {"slmzoo", "speechlm", "fake_frames", "fake_linear", "concat"} <= set(data.tags)
    assert data.license == "apache-2.0" and data.language == ["en"]
    wer = json.loads((trained_run / "eval" / "train.json").read_text())["wer"]
    results = {r.metric_type: r for r in data.eval_results}  # parsed by huggingface_hub's own model-index reader
    assert set(results) == {"wer", "cer"} and results["wer"].metric_value == round(100 * wer, 2)
    assert results["wer"].dataset_name == "train" and results["wer"].task_type == "automatic-speech-recognition"
    assert "slmzoo generate hf-hub:org/tiny" in card.text and "![training curves](curves.png)" in card.text
    assert "| encoder | fake_frames |" in card.text
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    card.validate()  # POST /api/validate-yaml: the test server checks the YAML and parses the model-index


def saving_folder(run: Path) -> Path:
    from slmzoo.training.checkpoints import latest_checkpoint

    return latest_checkpoint(run)


def test_hand_written_readme_survives_a_second_push(hub, saved_tiny):
    from huggingface_hub import HfApi, hf_hub_download

    assert cli("push", str(saved_tiny), "org/kept").exit_code == 0
    hub.requests.clear()
    assert slmzoo.load_processor("hf-hub:org/kept").sampling_rate == 16000
    assert not [path for _, path in hub.requests if path.endswith(".safetensors")]  # a processor needs no weights
    HfApi().upload_file(path_or_fileobj=b"# Written by hand\n", path_in_repo="README.md", repo_id="org/kept",
                        commit_message="by hand")
    again = cli("push", str(saved_tiny), "org/kept")
    assert again.exit_code == 0 and "was kept" in again.output
    assert Path(hf_hub_download("org/kept", "README.md")).read_text() == "# Written by hand\n"
    assert cli("push", str(saved_tiny), "org/kept", "--overwrite-readme").exit_code == 0
    assert Path(hf_hub_download("org/kept", "README.md")).read_text().startswith("---\nlibrary_name: slmzoo")


def test_push_to_a_branch_and_as_a_pull_request(hub, saved_tiny):
    from huggingface_hub import HfApi

    first = cli("push", str(saved_tiny), "org/branches")
    assert first.exit_code == 0, first.output
    HfApi().create_branch("org/branches", branch="dev")
    main = hub.repos["org/branches"].refs["main"]
    pushed = cli("push", str(saved_tiny), "org/branches", "--revision", "dev", "--full")
    assert pushed.exit_code == 0, pushed.output
    proposed = cli("push", str(saved_tiny), "org/branches", "--create-pr", "--commit-message", "Proposal")
    assert proposed.exit_code == 0 and "/discussions/1" in proposed.output, proposed.output
    refs = hub.repos["org/branches"].refs
    assert refs["main"] == main and refs["dev"] != main and "refs/pr/1" in refs  # only the branch asked for moved
    assert hub.repos["org/branches"].commits[refs["refs/pr/1"]].message == "Proposal"
    dev = slmzoo.from_pretrained("hf-hub:org/branches@dev")
    assert saving.read_info(hub_folder("org/branches", "dev"))["trainable_only"] is False and dev is not None


def hub_folder(repo_id: str, revision: str) -> Path:
    return Path(snapshot(HubSource(repo_id, revision), allow_patterns=["slmzoo.json"]))


def test_dry_run_uploads_nothing(hub, saved_tiny):
    result = cli("push", str(saved_tiny), "org/dry", "--dry-run", "--revision", "dev")
    assert result.exit_code == 0, result.output
    assert "org/dry at revision dev" in result.output and "model.safetensors" in result.output
    assert "library_name: slmzoo" in result.output and "README.md" in result.output
    assert "org/dry" not in hub.repos and not [r for r in hub.requests if r[0] == "POST"]


def test_push_errors_are_plain(hub, saved_tiny, monkeypatch):
    from huggingface_hub import HfApi

    HfApi(token=BOB).create_repo("bob/own")
    cases = {("bob/own",): "may not write", ("org/x", "--revision", "nope"): "no branch 'nope'"}
    for args, message in cases.items():
        result = cli("push", str(saved_tiny), *args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert cli("push", str(saved_tiny), "org/secret", "--private").exit_code == 0
    assert hub.repos["org/secret"].private
    monkeypatch.setenv("HF_TOKEN", BOB)  # may not read alice's private repository
    result = cli("show", "hf-hub:org/secret")
    assert result.exit_code == 2 and "no such repository, or a private one" in result.output
    monkeypatch.delenv("HF_TOKEN")
    result = cli("push", str(saved_tiny), "org/x")
    assert result.exit_code == 2 and "needs a Hugging Face token" in result.output


# -- backbones from another repository ---------------------------------------------------------------------
def test_trainable_only_push_fetches_its_pinned_backbone(hub, corpus, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    api = HfApi()
    base = slmzoo.build(tiny_model_card())
    base.llm.model.save_pretrained(tmp_path / "llm")  # a transformers checkpoint: config.json + model.safetensors
    api.create_repo("org/tiny-llm")
    api.upload_folder(folder_path=tmp_path / "llm", repo_id="org/tiny-llm", commit_message="tiny llm")
    api.upload_file(path_or_fileobj=b"raise SystemExit('never run')\n", path_in_repo="modeling_evil.py",
                    repo_id="org/tiny-llm", commit_message="code")
    api.upload_file(path_or_fileobj=b"pickle", path_in_repo="pytorch_model.bin", repo_id="org/tiny-llm",
                    commit_message="pickle")
    llm_sha = api.model_info("org/tiny-llm").sha
    card = tiny_model_card("llm.pretrained=hf-hub:org/tiny-llm", "llm.config=null", "train.freeze=[llm]")
    model = slmzoo.build(card)
    assert model.card.data["llm"]["pretrained"] == "hf-hub:org/tiny-llm"  # the card as written, not the cache path
    clips = [str(p) for p in sorted((corpus.parent / "audio").glob("*.flac"))[:2]]
    expected = outputs(model.eval(), clips)

    plan = model.push_to_hub("org/speech")
    assert plan.trainable_only and plan.front_matter["base_model"] == ["org/tiny-llm"]
    assert plan.front_matter["base_model_relation"] == "adapter"
    with torch.no_grad():  # the backbone repository moves on: the pushed model keeps its commit
        changed = slmzoo.build(tiny_model_card("llm.config.num_hidden_layers=1")).llm.model
    changed.save_pretrained(tmp_path / "llm2")
    api.upload_folder(folder_path=tmp_path / "llm2", repo_id="org/tiny-llm", commit_message="other")

    use_cache(monkeypatch, tmp_path / "fresh")
    info = json.loads(Path(snapshot("org/speech", allow_patterns=["slmzoo.json"]), "slmzoo.json").read_text())
    assert info["trainable_only"] and info["backbones"]["llm"] == {"source": "hf-hub:org/tiny-llm",
                                                                   "repo": "org/tiny-llm", "revision": llm_sha}
    weights = Path(snapshot("org/speech", allow_patterns=["model.safetensors"]), "model.safetensors")
    assert not any(k.startswith("llm.") for k in saving.read_weights(weights))  # trained weights only
    loaded = slmzoo.from_pretrained("hf-hub:org/speech")
    assert outputs(loaded, clips) == expected
    fetched = [path for _, path in hub.requests if path.startswith(f"/org/tiny-llm/resolve/{llm_sha}/")]
    assert fetched and not [p for p in fetched if p.endswith((".py", ".bin"))]  # data only: no code, no pickles
    use_cache(monkeypatch, tmp_path / "pulled")
    pulled = cli("pull", "org/speech", "--out", str(tmp_path / "copy"))  # the model and its pinned backbone
    assert pulled.exit_code == 0, pulled.output
    offline(monkeypatch)
    assert outputs(slmzoo.from_pretrained("hf-hub:org/speech"), clips) == expected
    assert outputs(slmzoo.from_pretrained(tmp_path / "copy"), clips) == expected  # a plain folder, same pins


def test_a_local_backbone_cannot_be_pushed_trainable_only(hub, tmp_path):
    base = slmzoo.build(tiny_model_card())
    base.llm.model.save_pretrained(tmp_path / "llm")
    model = slmzoo.build(tiny_model_card(f"llm.pretrained={tmp_path / 'llm'}", "llm.config=null",
                                         "train.freeze=[llm]"))
    with pytest.raises(HubError, match="local folder"):
        model.push_to_hub("org/local", trainable_only=True)
    plan = model.push_to_hub("org/local", trainable_only=False)  # --full: every weight, no backbone needed
    assert not plan.trainable_only and "base_model" not in plan.front_matter
    assert slmzoo.from_pretrained("hf-hub:org/local") is not None


# -- what a repository may not do -------------------------------------------------------------------------
def test_a_repo_without_card_is_not_an_slmzoo_model(hub, tmp_path):
    from huggingface_hub import HfApi

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    api = HfApi()
    api.create_repo("org/other")
    api.upload_folder(folder_path=tmp_path / "other", repo_id="org/other", commit_message="x")
    # no card.yaml: read as another system's release, which no importer recognises either
    with pytest.raises(NotAnSlmzooModelError, match=r"org/other is not an slmzoo model \(no card.yaml\), and no "
                                                     r"importer recognises this release"):
        slmzoo.from_pretrained("hf-hub:org/other")
    result = cli("generate", "hf-hub:org/other", "--audio", __file__)
    assert result.exit_code == 2 and "not an slmzoo model" in result.output
    assert (snapshot("org/other") / "config.json").is_file()  # what an importer reads


def test_missing_plugin_is_named_with_its_distribution(hub, tmp_path):
    from huggingface_hub import HfApi

    folder = slmzoo.build(tiny_model_card()).save_pretrained(tmp_path / "m")
    info = saving.read_info(folder)
    assert {"kind": "encoder", "name": "fake_frames"} in [{k: e[k] for k in ("kind", "name")} for e in info["plugins"]]
    info["plugins"].append({"kind": "encoder", "name": "ghost", "plugin": "ghosts", "distribution": "slmzoo-ghosts",
                            "version": "1.2.3"})
    saving.seal(folder, info)
    api = HfApi()
    api.create_repo("org/ghost")
    api.upload_folder(folder_path=folder, repo_id="org/ghost", commit_message="x")
    with pytest.raises(saving.MissingPluginError, match=r"pip install 'slmzoo-ghosts==1.2.3'"):
        slmzoo.from_pretrained("hf-hub:org/ghost")
    hub.requests.clear()
    result = cli("show", "hf-hub:org/ghost")
    assert result.exit_code == 2 and "encoder 'ghost' from plugin 'ghosts'" in result.output
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if "/resolve/" in path}
    assert fetched <= {"card.yaml", "slmzoo.json"}  # show fetches the card alone


def test_hub_weights_load_strictly(hub, saved_tiny, tmp_path):
    """A pushed repository whose safetensors lacks a tensor (manifest and all consistent) is refused by name."""
    import shutil

    from huggingface_hub import HfApi
    from safetensors.torch import save_file

    folder = Path(shutil.copytree(saved_tiny, tmp_path / "short"))
    tensors = saving.read_weights(folder)
    dropped = sorted(k for k in tensors if k.startswith("adapter."))[0]
    save_file({k: v.clone() for k, v in tensors.items() if k != dropped}, str(folder / "model.safetensors"))
    saving.seal(folder)
    api = HfApi()
    api.create_repo("org/short")
    api.upload_folder(folder_path=folder, repo_id="org/short", commit_message="x")
    with pytest.raises(saving.CheckpointError, match=f"missing tensors: {dropped}"):
        slmzoo.from_pretrained("hf-hub:org/short")


def test_show_and_diff_of_a_hub_card_import_no_torch(hub, tmp_path):
    from huggingface_hub import HfApi

    folder = slmzoo.build(slmzoo.load_card("salm", preset="tiny")).save_pretrained(tmp_path / "salm")
    api = HfApi()
    api.create_repo("org/salm")
    api.upload_folder(folder_path=folder, repo_id="org/salm", commit_message="x")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    for args in (["show", "hf-hub:org/salm"], ["diff", "hf-hub:org/salm", str(folder)]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "slmzoo", *args], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line]
        assert not [m for m in imported if m.split(".")[0] in ("torch", "transformers")], args
    assert "name: salm" in subprocess.run([sys.executable, "-m", "slmzoo", "show", "hf-hub:org/salm"],
                                          capture_output=True, text=True, env=env, cwd=REPO).stdout
