"""Model files written in Ember (*.ember), shipped as package data."""
