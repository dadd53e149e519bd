"""Delivery: what makes a stem land on an editor's timeline. Broadcast WAV chunks (bwf), R 128
loudness (loudness), SMPTE timecode (timecode) and OpenTimelineIO timelines (timeline); the
outputs module puts them together."""
