"""Desktop-side training of the UNet models (Keras 3). Imports bcedge, never the reverse."""
