"""Write OpenRLAIF's built-in verifiable-instruction set: src/openrlaif/data/verifiable_prompts.jsonl.

    .venv/bin/python bench/make_verifiable_set.py

Short everyday requests written for OpenRLAIF, each with one or two instructions that a program can check
and that fit a short answer (lowercase, no commas, an exact closing phrase, required or forbidden words,
word and sentence limits, a bullet count, JSON, a <<title>>, a postscript, quotation marks, highlights,
placeholders, repeating the request). The file is in the public IFEval format (key, prompt,
instruction_id_list, kwargs) plus a ``split`` column, so IFEval's checkers grade it (``rlaif bench
ifeval -p builtin``; the demo's eval). The split is seeded: 'train' prompts may be sampled for training,
'heldout' ones only measure. Nothing here comes from IFEval's own prompts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "openrlaif" / "data" / "verifiable_prompts.jsonl"

# (request, two words a good answer would naturally use, a word it can easily do without)
TASKS = [
    ("Describe a sunset over the sea.", ("orange", "water"), "beautiful"),
    ("Explain what a battery does.", ("energy", "device"), "electricity"),
    ("Give one tip for sleeping better.", ("bed", "screen"), "sleep"),
    ("Say why people keep houseplants.", ("air", "green"), "plant"),
    ("Describe the taste of a lemon.", ("sour", "juice"), "yellow"),
    ("Explain why the sky looks blue.", ("light", "scatter"), "sun"),
    ("Suggest a name for a friendly robot.", ("robot", "name"), "cute"),
    ("Tell me how to make a cup of tea.", ("water", "minutes"), "cup"),
    ("Describe a busy train station.", ("people", "platform"), "crowd"),
    ("Explain what a library is for.", ("books", "borrow"), "read"),
    ("Give advice to someone starting to run.", ("slow", "shoes"), "easy"),
    ("Describe your ideal weekend.", ("morning", "friends"), "relax"),
    ("Explain how a bicycle moves.", ("pedal", "wheel"), "ride"),
    ("Say what makes a good teacher.", ("patient", "students"), "kind"),
    ("Describe the smell of rain.", ("earth", "fresh"), "wet"),
    ("Explain why we brush our teeth.", ("teeth", "bacteria"), "clean"),
    ("Suggest a healthy snack.", ("fruit", "nuts"), "tasty"),
    ("Describe a cat waking up.", ("stretch", "yawn"), "cute"),
    ("Explain what a map shows.", ("roads", "places"), "paper"),
    ("Give a reason to learn a second language.", ("people", "travel"), "useful"),
    ("Describe a winter morning.", ("cold", "frost"), "snow"),
    ("Explain what recycling means.", ("waste", "new"), "bin"),
    ("Tell me how to keep a plant alive.", ("water", "light"), "grow"),
    ("Describe the sound of a forest.", ("birds", "leaves"), "quiet"),
    ("Explain why exercise is good for you.", ("heart", "strong"), "health"),
    ("Suggest a game for a rainy afternoon.", ("cards", "players"), "fun"),
    ("Describe a bowl of soup.", ("warm", "spoon"), "hot"),
    ("Explain what a calendar is for.", ("days", "plan"), "date"),
    ("Give one tip for saving money.", ("budget", "spend"), "money"),
    ("Describe a mountain at dawn.", ("peak", "light"), "high"),
    ("Explain how bees help flowers.", ("pollen", "flowers"), "honey"),
    ("Say what to pack for a beach day.", ("towel", "water"), "sand"),
    ("Describe an old wooden door.", ("wood", "handle"), "old"),
    ("Explain what a thermometer measures.", ("temperature", "degrees"), "hot"),
    ("Give advice for a first job interview.", ("questions", "time"), "nervous"),
    ("Describe a market on a Saturday.", ("stalls", "people"), "busy"),
    ("Explain why leaves change colour in autumn.", ("green", "trees"), "autumn"),
    ("Suggest a way to start the day well.", ("water", "morning"), "coffee"),
    ("Describe a river in spring.", ("water", "banks"), "flow"),
    ("Explain what an umbrella is for.", ("rain", "dry"), "wet"),
    ("Tell me how to write a thank-you note.", ("thank", "name"), "letter"),
    ("Describe a quiet café.", ("coffee", "table"), "cozy"),
    ("Explain why we need sleep.", ("body", "rest"), "tired"),
    ("Give a tip for learning to cook.", ("recipe", "simple"), "food"),
    ("Describe a full moon.", ("night", "bright"), "round"),
    ("Explain what a bridge does.", ("river", "cross"), "road"),
    ("Suggest a hobby for a quiet evening.", ("book", "music"), "relax"),
    ("Describe a garden after rain.", ("leaves", "drops"), "wet"),
    ("Explain how a kettle boils water.", ("heat", "water"), "hot"),
    ("Give advice for a long car trip.", ("breaks", "water"), "drive"),
    ("Describe the first day of school.", ("new", "teacher"), "nervous"),
    ("Explain what a compass does.", ("north", "needle"), "direction"),
    ("Say why dogs make good companions.", ("loyal", "walks"), "friend"),
    ("Describe a thunderstorm.", ("thunder", "lightning"), "loud"),
    ("Explain what a recipe is.", ("steps", "ingredients"), "food"),
    ("Give a tip for staying focused.", ("phone", "breaks"), "focus"),
    ("Describe a snowy street at night.", ("snow", "lamps"), "white"),
    ("Explain why we wear seat belts.", ("safe", "crash"), "car"),
    ("Suggest a gift for a grandparent.", ("photo", "time"), "present"),
    ("Describe a field of sunflowers.", ("yellow", "sun"), "tall"),
]

CLOSINGS = ["Hope this helps.", "That is all.", "Thanks for asking.", "Enjoy your day."]


def instruction(kind: str, task: tuple, rng: random.Random) -> tuple[str, str, dict]:
    """(instruction id, the sentence that asks for it, the checker's arguments)."""
    request, words, avoid = task
    if kind == "lowercase":
        return "change_case:english_lowercase", "Write your whole answer in lowercase letters, with no capital letters at all.", {}
    if kind == "capital":
        return "change_case:english_capital", "Write your whole answer in capital letters.", {}
    if kind == "no_comma":
        return "punctuation:no_comma", "Do not use any commas in your answer.", {}
    if kind == "end":
        phrase = rng.choice(CLOSINGS)
        return "startend:end_checker", f"End your answer with the exact phrase \"{phrase}\" and write nothing after it.", {"end_phrase": phrase}
    if kind == "include":
        return "keywords:existence", f"Use the words \"{words[0]}\" and \"{words[1]}\" in your answer.", {"keywords": list(words)}
    if kind == "forbid":
        return "keywords:forbidden_words", f"Do not use the word \"{avoid}\".", {"forbidden_words": [avoid]}
    if kind == "words":
        n = rng.choice([25, 30, 40, 50])
        return "length_constraints:number_words", f"Answer in fewer than {n} words.", {"relation": "less than", "num_words": n}
    if kind == "sentences":
        n = rng.choice([2, 3])
        return ("length_constraints:number_sentences", f"Answer in at most {n} sentences.",
                {"relation": "less than", "num_sentences": n + 1})
    if kind == "bullets":
        n = rng.choice([2, 3])
        return ("detectable_format:number_bullet_lists",
                f"Answer with exactly {n} bullet points, each starting with \"* \".", {"num_bullets": n})
    if kind == "json":
        return "detectable_format:json_format", "Give your whole answer as JSON, and nothing outside the JSON.", {}
    if kind == "title":
        return "detectable_format:title", "Give your answer a title wrapped in double angular brackets, such as <<my title>>.", {}
    if kind == "postscript":
        return "detectable_content:postscript", "At the end, add a postscript starting with P.S.", {"postscript_marker": "P.S."}
    if kind == "quotation":
        return "startend:quotation", "Wrap your entire answer in double quotation marks.", {}
    if kind == "highlight":
        return ("detectable_format:number_highlighted_sections",
                "Highlight at least one phrase with markdown asterisks, like *this phrase*.", {"num_highlights": 1})
    if kind == "placeholder":
        return ("detectable_content:number_placeholders",
                "Include at least one placeholder in square brackets, such as [name].", {"num_placeholders": 1})
    if kind == "repeat":
        return ("combination:repeat_prompt", "First repeat the request above word for word, then give your answer.",
                {"prompt_to_repeat": request})
    if kind == "frequency":
        return ("keywords:frequency", f"Use the word \"{words[0]}\" at least twice.",
                {"keyword": words[0], "frequency": 2, "relation": "at least"})
    raise ValueError(kind)


SINGLE = ["lowercase", "capital", "no_comma", "end", "include", "forbid", "words", "sentences", "bullets", "json",
          "title", "postscript", "quotation", "highlight", "placeholder", "repeat", "frequency"]
# pairs that do not fight each other (no lowercase with capitals, no JSON with quotes or bullets, ...)
PAIRS = [("lowercase", "words"), ("no_comma", "sentences"), ("include", "words"), ("title", "no_comma"),
         ("end", "words"), ("forbid", "sentences"), ("lowercase", "end"), ("bullets", "include"),
         ("postscript", "no_comma"), ("capital", "words"), ("highlight", "sentences"), ("title", "include"),
         ("quotation", "no_comma"), ("frequency", "words"), ("placeholder", "sentences"), ("lowercase", "forbid")]


def main() -> None:
    rng = random.Random(20261202)
    rows = []
    for n, task in enumerate(TASKS):
        # every task once with one instruction and once with a pair: 120 prompts
        for kinds in ([SINGLE[n % len(SINGLE)]], list(PAIRS[n % len(PAIRS)])):
            parts = [instruction(kind, task, rng) for kind in kinds]
            prompt = " ".join([task[0]] + [sentence for _, sentence, _ in parts])
            rows.append({"key": f"v{len(rows) + 1:03d}", "prompt": prompt,
                         "instruction_id_list": [iid for iid, _, _ in parts], "kwargs": [kw for _, _, kw in parts]})
    heldout = set(random.Random(7).sample(range(len(TASKS)), len(TASKS) // 3))  # a third of the tasks
    for n, row in enumerate(rows):
        row["split"] = "heldout" if n // 2 in heldout else "train"  # both prompts of a task share its split
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "heldout")}
    print(f"{OUT}: {len(rows)} prompts ({counts})")


if __name__ == "__main__":
    main()
