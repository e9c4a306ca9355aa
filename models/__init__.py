"""LightningModules (face detection, face identification) and the nn.Modules they are made of."""
