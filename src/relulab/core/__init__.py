"""What every other package of relulab builds on; it imports nothing of relulab.

- `errors`: `UserError` (one line for the user, exit code 2), `unknown_choice` (with a did-you-mean hint).
- `registry`: `Registry`, name -> entry, and the `NAME[:PARAM]` lookup the activation and initializer
  registries share.
- `ranges`: the one parser of `0,1,2` / `0-4` lists (seeds, epochs, counts) and the 64-bit bound.
- `mapping`: plain dataclasses from mappings (a spec's sections), each error naming the field's path.
- `util`: files written atomically, output locations checked before work starts, memory checks, reports
  staged and swapped whole.
- `env`: devices, seeding, provenance (relulab's version and source hash, torch, device, host).
- `stats`: summaries over seeds (Student t intervals), Welch comparisons, bootstrap, Holm.
"""
