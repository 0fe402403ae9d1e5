"""Lightning glue: the LightningModule, callbacks and the train/sample drivers."""
