"""The laws over model size at a fixed precision: the critical size (threshold law) and the loss power
law."""
