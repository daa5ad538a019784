"""Blinded pairwise human evaluation of two text-to-image systems (DrawBench protocol).

`cascade eval sheets make` pairs two `cascade sample` folders prompt by prompt and writes a
key plus, per rater, a self-contained HTML sheet and a CSV template; `cascade eval sheets
ingest` validates the filled sheets, un-blinds them with the key and writes ``results.json``.

Modules, in the order the data flows:

- `samples`: read a `cascade sample` folder (``metadata.jsonl``)
- `study`: match the pairs, lay out each rater's blinded sheet; the key's JSON
- `images`, `html_sheet`, `sheet_assets`, `answer_csv`: the files raters get
- `make`: write a study to disk
- `ingest`: validate filled answer sheets and un-blind them
- `stats`, `results`: preference rates, bootstrap intervals, agreement; ``results.json``
- `errors`: the one error type of bad sheet input (the commands are in `cascade.cli.sheets`)
"""
