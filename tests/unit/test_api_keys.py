"""API keys: made by `hfq api-key`, stored only as hashes, checked in constant time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hfqueue import ConfigError, Settings
from hfqueue.core.apikeys import hash_key, new_key, owner_of
from hfqueue.core.config import load_settings

pytestmark = pytest.mark.timeout(30)


def test_hfq_api_key_prints_a_key_and_the_entry_holding_its_hash() -> None:
    # given / when a key is made for team-nlp
    run = subprocess.run([sys.executable, "-m", "hfqueue", "api-key", "team-nlp"], capture_output=True, text=True,
                         timeout=20)

    # then it prints the key once and the HFQ_API_KEYS entry that accepts it (and only it)
    assert run.returncode == 0, run.stderr
    lines = [line.strip() for line in run.stdout.splitlines()]
    key = next(line for line in lines if line.startswith("hfq-"))
    entry = json.loads(next(line for line in lines if line.startswith("{")))
    assert entry == {"team-nlp": hash_key(key)} and key not in json.dumps(entry)
    assert owner_of(key, Settings(api_keys=entry).api_keys) == "team-nlp"
    assert owner_of(new_key(), entry) is None


def test_a_key_name_the_settings_would_refuse_is_refused_at_once() -> None:
    # given / when a key is asked for with a name holding a space
    run = subprocess.run([sys.executable, "-m", "hfqueue", "api-key", "team nlp"], capture_output=True, text=True,
                         timeout=20)

    # then hfq exits 2 naming the rule
    assert run.returncode == 2 and "letters, digits" in run.stderr


@pytest.mark.parametrize("value", ['{"a": "hfq-the-key-itself"}', '{"a": "sha256:abc"}', '{"": "sha256:' + "0" * 64 + '"}'])
def test_hfq_api_keys_must_hold_hashes(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # given HFQ_API_KEYS holding a raw key, a short hash, or an empty name
    monkeypatch.setenv("HFQ_API_KEYS", value)

    # when the settings are built / then they are refused naming the variable
    with pytest.raises(ConfigError, match="HFQ_API_KEYS"):
        load_settings()
