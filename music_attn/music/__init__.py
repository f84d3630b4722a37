"""Music I/O and tokens: MIDI files <-> the project's score object <-> event tokens."""
