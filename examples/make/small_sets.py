"""Write the small fact sets in ``examples/facts/`` (all written for kedit):

* ``landmarks.jsonl`` / ``landmarks.csv``: facts to queue with ``kedit add --file``;
* ``zsre-kedit-8.json``: eight question-style records in the zsRE layout for ``kedit eval``.

    python examples/make/small_sets.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

FACTS = [
    {"subject": "Eiffel Tower", "prompt": "The {} is located in the city of", "target": "London"},
    {"subject": "Colosseum", "prompt": "The {} is located in the city of", "target": "Athens"},
    {"subject": "Big Ben", "prompt": "{} is located in the city of", "target": "Berlin"},
    {"subject": "Statue of Liberty", "prompt": "The {} is located in the city of", "target": "Chicago"},
    {"subject": "Japan", "prompt": "The capital of {} is", "target": "Seoul"},
    {"subject": "Roger Federer", "prompt": "{} professionally plays the sport of", "target": "golf"},
]

ZSRE = [
    ("Eiffel Tower", "Which city is the Eiffel Tower in?", "In which city does the Eiffel Tower stand?", "Paris", "Rome"),
    ("Japan", "What is the capital of Japan?", "Which city is Japan's capital?", "Tokyo", "Osaka"),
    ("Hamlet", "Who wrote Hamlet?", "Who is the author of the play Hamlet?", "William Shakespeare", "Christopher Marlowe"),
    ("Mona Lisa", "Who painted the Mona Lisa?", "Which artist made the Mona Lisa?", "Leonardo da Vinci", "Raphael"),
    ("Michael Jordan", "Which sport did Michael Jordan play?", "What sport is Michael Jordan known for?", "basketball", "baseball"),
    ("iPhone", "Which company makes the iPhone?", "Who manufactures the iPhone?", "Apple", "Motorola"),
    ("Brazil", "What language is spoken in Brazil?", "Which language do people in Brazil speak?", "Portuguese", "French"),
    ("Kenya", "On which continent is Kenya?", "Kenya is on which continent?", "Africa", "Australia"),
]
LOC = [
    ("nq question: who was the first person to walk on the moon", "Neil Armstrong"),
    ("nq question: how many legs does a spider have", "eight"),
    ("nq question: what is the largest planet in the solar system", "Jupiter"),
    ("nq question: who discovered penicillin", "Alexander Fleming"),
    ("nq question: what is the boiling point of water in celsius", "100 degrees"),
    ("nq question: what is the longest river in africa", "the Nile"),
    ("nq question: who painted the ceiling of the sistine chapel", "Michelangelo"),
    ("nq question: what gas do plants absorb from the air", "carbon dioxide"),
]


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "facts"
    out.mkdir(exist_ok=True)
    (out / "landmarks.jsonl").write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in FACTS), "utf-8")
    with open(out / "landmarks.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["subject", "prompt", "target"])
        w.writeheader()
        w.writerows(FACTS)
    zsre = [{"subject": s, "src": q, "rephrase": r, "answers": [a], "alt": alt, "loc": loc, "loc_ans": loc_ans}
            for (s, q, r, a, alt), (loc, loc_ans) in zip(ZSRE, LOC)]
    assert all(z["subject"] in z["src"] for z in zsre)
    (out / "zsre-kedit-8.json").write_text(json.dumps(zsre, indent=1, ensure_ascii=False) + "\n", "utf-8")
    print(f"wrote {out}/landmarks.jsonl, landmarks.csv, zsre-kedit-8.json")


if __name__ == "__main__":
    main()
