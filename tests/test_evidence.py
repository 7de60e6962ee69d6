"""Evidence bundles: everything an auditor needs in one folder, and a check that names what changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loop_steps import loop_once

from loopml.context import Workspace
from loopml.evidence import EvidenceError, verify, write_bundle
from loopml.examples import churn
from loopml.reproduction import reproduce

pytestmark = [pytest.mark.training, pytest.mark.slow]
GIT_ENV = {"GIT_AUTHOR_NAME": "DS", "GIT_AUTHOR_EMAIL": "ds@example.com", "GIT_COMMITTER_NAME": "DS",
           "GIT_COMMITTER_EMAIL": "ds@example.com"}


def _openssl_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A key pair made the way docs/operations.md tells a team to."""
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True)
    return private, public


def _keys(folder: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evidence") / "project"
    config = churn.init_project(folder, n_customers=500)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "project"]):
        subprocess.run(["git", *args], cwd=folder, check=True, env={**os.environ, **GIT_ENV})
    old = Path.cwd()
    os.chdir(folder)
    try:
        model = loop_once(config)
    finally:
        os.chdir(old)
    return config, model


def test_a_signed_bundle_holds_every_record_and_checks_out(registered, tmp_path) -> None:
    config, model = registered
    ws = Workspace.open(config)
    private, public = _openssl_keys(tmp_path, "team")
    out = tmp_path / "bundle"
    verdict = reproduce(ws, model.name, model.version)
    files = write_bundle(ws, model.name, model.version, out, reproduction=verdict, signing_key=private)
    assert set(files) == {"model.pt2", "model_card.md", "validation_report.html", "data_manifest.json", "code.json",
                          "environment.json", "history.json", "approvals.json", "lineage.json", "lineage.html",
                          "reproduction.json", "SHA256SUMS", "SHA256SUMS.sig"}
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out).returncode == 0  # plain tools agree
    card = (out / "model_card.md").read_text()
    assert model.artifact_sha256 in card and "reproduced bit for bit" in card and "labels.csv (sha256" in card
    assert "## What the model relies on" in card and "- tenure_months: " in card
    assert json.loads((out / "reproduction.json").read_text())["outcome"] == "identical"
    manifest = json.loads((out / "data_manifest.json").read_text())
    assert manifest["labels"]["ref"] == model.lineage["datasets"]["labels"]
    assert json.loads((out / "code.json").read_text())["git_commit"] == model.git_commit
    result = verify(out, public)
    assert json.loads((out / "approvals.json").read_text()) == {"policy": {}, "requests": []}  # none asked for
    assert result.ok and result.signature_checked and result.files == 11


def test_a_changed_added_or_missing_file_and_a_foreign_key_are_each_named(registered, tmp_path) -> None:
    config, model = registered
    ws = Workspace.open(config)
    private, _ = _keys(tmp_path, "team")
    _, stranger = _keys(tmp_path, "stranger")
    out = tmp_path / "bundle"
    write_bundle(ws, model.name, model.version, out, signing_key=private)
    report = out / "validation_report.html"
    report.write_text(report.read_text().replace("PASS", "pass", 1) + " ")
    (out / "note.txt").write_text("added later")
    (out / "history.json").unlink()
    problems = verify(out, stranger).problems
    assert any(p.startswith("validation_report.html: its sha256 differs") for p in problems)
    assert any(p.startswith("note.txt: not listed") for p in problems)
    assert any(p.startswith("history.json: listed in SHA256SUMS but missing") for p in problems)
    assert any(p.startswith("SHA256SUMS.sig: the signature does not match") for p in problems)
    done = subprocess.run([sys.executable, "-m", "loopml.cli", "models", "verify-evidence", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "FAILED validation_report.html" in done.stderr


def test_the_command_writes_into_a_new_folder_only(registered, tmp_path) -> None:
    config, model = registered
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(EvidenceError, match="is not empty"):
        write_bundle(Workspace.open(config), model.name, model.version, busy)
    out = tmp_path / "fresh"
    done = subprocess.run([sys.executable, "-m", "loopml.cli", "models", "evidence", f"{model.name}@production",
                           str(out), "--no-reproduce", "--config", str(config), "--json"],
                          capture_output=True, text=True, cwd=config.parent)
    assert done.returncode == 0, done.stderr
    assert "SHA256SUMS" in json.loads(done.stdout)["files"] and verify(out).ok
    checked = subprocess.run([sys.executable, "-m", "loopml.cli", "models", "verify-evidence", str(out), "--json"],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"] is True
