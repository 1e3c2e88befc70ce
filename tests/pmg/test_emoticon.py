"""Emoticon scenario: chat + used emoticons -> keywords -> grid -> selected emoticon, on small models."""

from __future__ import annotations

import json

from pmg.emoticon import emoticon_keywords, main


class CannedExtractor:
    """Records what it was asked, answers with fixed keywords (the LLM path is tested in test_keywords)."""

    def __init__(self):
        self.calls = []

    def preference(self, histories):
        self.calls.append(("preference", histories))
        return {k: ["cat", "chubby"] for k in histories}

    def target(self, items):
        self.calls.append(("target", items))
        return {k: ["joyful", "waving"] for k in items}


def test_keywords_come_from_emoticons_and_last_chat_turns():
    ex = CannedExtractor()
    chars, emotions = emoticon_keywords(["I passed!", "Congrats"], ["happy cat", "sleepy cat"], ex)
    assert (chars, emotions) == (["cat", "chubby"], ["joyful", "waving"])
    assert ex.calls[0][1] == {"chat": ["happy cat", "sleepy cat"]}
    assert ex.calls[1][1] == {"chat": "#Alice: I passed!  #Bob: Congrats"}


def test_cli_writes_sheet(tmp_path, capsys):
    out = tmp_path / "emo.png"
    main(["--conversation", '["I passed the exam, so happy", "wow congratulations"]',
          "--emoticons", '["happy cat", "cat waving paw", "sleepy cat"]', "--out", str(out), "--steps", "2"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.exists() and row["sheet"] == str(out)
    assert "cat" in row["characters"] and row["emotion"]
    assert 0 <= row["chosen"] < 3
