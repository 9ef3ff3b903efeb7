"""The QMIX-family trainer, its mixer registry and the TFCAF mixer (planned: issue "Trainer")."""
