"""What every other package of relulab builds on; it imports nothing of relulab.

- `errors`: `UserError` (one line for the user, exit code 2), `unknown_choice` (with a did-you-mean hint).
- `registry`: `Registry`, name -> entry, and the `NAME[:PARAM]` lookup the activation and initializer
  registries share.
- `ranges`: the one parser of `0,1,2` / `0-4` lists (seeds, epochs, counts) and the 64-bit bound.
- `mapping`: plain dataclasses from mappings (a spec's sections), each error naming the field's path.
- `util`: files written atomically, output locations checked before work starts, memory checks, reports
  staged and swapped whole.
- `env`: devices, seeding, provenance (relulab's version and source hash, torch, device, host).
- `background`: work a command needs later that waits for a busy GPU, then runs on a thread (the report's
  imports, during a pack's epochs).
- `reference`: code named in a spec (`target: "pkg.module:function"` or `"file.py:function"`): imported,
  called with its kwargs, and hashed (the SHA-256 of its source goes into the run key).
- `stats`: summaries over seeds (Student t intervals), Welch comparisons, bootstrap, Holm.
"""
