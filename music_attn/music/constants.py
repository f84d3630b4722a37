"""Defaults of the MIDI reader and the tokenizers, each named once with its reason.

Changing a default changes the vocabulary of every tokenizer built without
arguments, so a model trained with the old value no longer matches; saved
tokenizer configs (JSON, checkpoints) always carry their own values.
"""

# --- MIDI -------------------------------------------------------------------

# The MIDI standard's tempo when a file sets none: 120 beats per minute.
DEFAULT_TEMPO_US = 500_000
# The MIDI standard's metre when a file sets none.
DEFAULT_TIME_SIGNATURE = (4, 4)
# Channel 10 (0-based 9) is the General MIDI percussion channel: unpitched.
DRUM_CHANNEL = 9
# CC64 is the sustain (damper) pedal; values >= 64 mean "down".
SUSTAIN_CONTROL = 64
SUSTAIN_THRESHOLD = 64
# Larger inputs are refused before they are read: the largest real MIDI files
# (orchestral scores, piano-roll dumps) are a few MB, and every byte can be an
# event, so this bounds the reader's memory (a few hundred MB at most).
MIDI_MAX_TRACKS = 65_535      # the header's unsigned 16-bit track count
MIDO_MAX_TRACKS = 32_767      # what mido reads and writes in one header (it packs the count signed)
MAX_MIDI_BYTES = 16 * 2**20
# Track names, lyrics and markers longer than this many characters are cut
# (with an ellipsis): real ones are a line at most, and a megabyte-long text
# event must not swamp a page or a terminal.
MAX_TEXT_CHARS = 200

# --- Both tokenizers ---------------------------------------------------------

# Specials come first so that PAD is 0, as in MidiTok and most sequence code.
SPECIAL_TOKENS = ("PAD", "BOS", "EOS")
# The whole MIDI range: every pitch survives a round trip; unused rows are cheap.
PITCH_RANGE = (0, 127)
# Oore et al. (2018) use 32 velocity bins: finer steps are inaudible.
VELOCITY_BINS = 32
# The velocity of bin i of n: 128 (i + 1) // n, the loudest 127 ("steps128").
# With 32 bins these are the multiples of 4, which hold the velocities notation
# programs write for the dynamics (p 48, mp 64, mf 80, f 96, ff 112), so a
# velocity of 80 comes back as 80.  Configs saved before this setting existed
# used round(127 (i + 1) / n) ("round127": 79 and 83, no 80) and keep it.
VELOCITY_SCALE = "steps128"
VELOCITY_SCALES = ("steps128", "round127")
# The velocity written for notes decoded without a velocity token (mezzo-forte).
DEFAULT_VELOCITY = 80
# Decoded files without Tempo tokens are written at the MIDI default tempo:
# 120 beats per minute (``decode --bpm`` chooses another).
DECODE_TEMPO_BPM = 120.0
# Tempo tokens (``tempo=True``) hold whole beats per minute from 20 (a slow
# largo counted in half beats) to 400 (fast reels written with a quarter-note
# beat reach 360): every tempo a score prints comes back exactly.
TEMPO_RANGE_BPM = (20, 400)

# --- Bounds on tokenizer settings ---------------------------------------------
# A config read from a file (token JSON, a checkpoint) is checked against these
# before anything is built, so no setting can make the vocabulary or a decoded
# file absurdly large.  Each is far beyond any musical use.
MAX_POSITIONS_PER_BEAT = 96  # 1/384 notes
MAX_DURATION_BEATS_LIMIT = 64  # 16 bars of 4/4
MAX_EMPTY_BARS_LIMIT = 256
MIN_TIME_STEP = 0.001  # 1 ms
MAX_SHIFT_STEPS_LIMIT = 1000
MAX_GAP_LIMIT = 3600.0  # one hour of silence

# --- PerformanceTokenizer (Oore et al. 2018, Music Transformer) ---------------

# One TimeShift step is 10 ms: below the threshold of perceived timing jitter.
TIME_STEP_SECONDS = 0.01
# TimeShift_1 .. TimeShift_100: one token moves the clock by at most 1 s.
MAX_SHIFT_STEPS = 100
# A gap between two events (a silence, or a held note with nothing else
# happening) longer than this is shortened to it, so any gap costs at most
# 5 TimeShift tokens instead of 100 per second of silence.
MAX_GAP_SECONDS = 5.0
# Decoded performances use 500 ticks per beat at 120 bpm: one tick = 1 ms, so a
# 10 ms step is a whole number of ticks and a decode-encode cycle is exact.
PERFORMANCE_TICKS_PER_BEAT = 500
# The sustain pedal lengthens notes as it does on a piano performance.
PERFORMANCE_SUSTAIN = True

# --- RemiTokenizer (Huang & Yang 2020) ----------------------------------------

# 12 positions per quarter note hold both sixteenths (3) and eighth triplets (4).
POSITIONS_PER_BEAT = 12
# Durations up to two 4/4 bars; longer notes are cut to this length.
MAX_DURATION_BEATS = 8
# A run of more than this many empty bars (a long silence) is shortened to it,
# so hours of silence cost at most 16 Bar tokens.
MAX_EMPTY_BARS = 16
# Metres with a TimeSig token: x/2 (cut time, 3/2 hornpipes), x/4 and x/8 up to
# 12 beats, enough for the folk and chorale corpus (2/4, 3/4, 4/4, 6/8, 9/8, 12/8,
# 2/2, 3/2).  Other metres are read as 4/4.
TIME_SIGNATURES = tuple(
    [(n, 2) for n in range(1, 7)] + [(n, 4) for n in range(1, 13)] + [(n, 8) for n in range(1, 13)]
)
# Decoded REMI files use 480 ticks per beat (40 per position at 12 per beat).
REMI_TICKS_PER_BEAT = 480
