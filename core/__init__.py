"""The contract layer that ``training/``, ``index/`` and ``service/`` share, and nothing else.

It imports none of them; they meet here. One module owns each on-disk format:

- ``models``: encoders and the classifier (torchvision ResNet, CIFAR stem), normalisation,
  the one embedding function, loading an encoder from its weights
- ``images``: any decoded image to the uint8 RGB array the models see (training data and uploads)
- ``datasets``: image folders and CIFAR-10 decoded once into cached uint8 tensors
- ``atomic``: writes that are complete or absent (temp file, fsync, rename)
- ``home``: the artifact home (``--home``): its folders and the CURRENT pointer
- ``runs``: a training run's folder and files (config.json, metrics.jsonl, finetune.json, eval/)
- ``index_files``: the index part of a run or bundle (FAISS index, items, stored pixels)
- ``bundles``: servable bundles: manifest, publishing, loading and validating
- ``collection``: items added, replaced and deleted while serving: the append-only, CRC-checked,
  fsynced log under ``<home>/collection/`` that the service writes and ``simclr export`` reads
- ``devices``: device choice and thread counts
"""
