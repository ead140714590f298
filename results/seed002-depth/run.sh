#!/bin/sh
# Seed 002 through depth on the real Fashion-MNIST (apt-get install dataset-fashion-mnist), CPU, 2026-12-01.
# The first attempt ran with torch's default 2 threads on a shared 2-core VM (an epoch took ~8 min); it was
# interrupted (Ctrl-C) after one run had saved its first epoch and resumed with one thread (~25-40 s an epoch).
relulab run seed002 --set data.name=fashion-mnist --set threads=1 --store seed002.sqlite
relulab report seed002.sqlite   # report.md, summary.csv, runs.csv, figures/1-seed002-depth.png
