"""Running a trained model: checkpoint loading, windows and NLL, sampling, continuing a MIDI file, harmonizing a melody."""
