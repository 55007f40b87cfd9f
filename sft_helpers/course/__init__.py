"""The course's machinery, built on the library (`sft_helpers`), which never imports it.

`world` / `conversations` / `data` (the fictional world, its chat data and every file under `data/`),
`tokenizer` and `pretrain` (the embedded base model), `runner` (`sft-course`: every notebook headless),
`lanes` (per-lane budgets and assertions), `colab` (the notebooks' install cell), `exercises`, `plots`,
`report`, `runs` (worker processes, docs tables), `experiments` (lessons 01-03), `hyperparameters`
(lesson 05), `data_strategy` (lesson 06), `bench` (benchmark commands writing `docs/`), and the suite's
notebook plumbing (`pytest_plugin`).
"""
