"""Datasets: the pattern generator (plain torch) and LightningDataModules."""
