"""Spotting: an editor's cut in, one stem per cue out, and the timeline back in the editor's own
format (`selva-rt spot`).

    cut.py      the cut as selva-rt reads it (`Cut`: rate, start, picture shots, markers), from
                .otio or, through OpenTimelineIO's adapters, FCP7 XML and AAF; media relinking
    read.py     `read_cut`: any of the formats below, by suffix
    fcpxml.py   Final Cut Pro's FCPXML (.fcpxml, .fcpxmld), read and written here (the adapter
                misreads 29.97 and drops notes; see the module)
    edl.py      CMX 3600 EDLs with `* LOC:` locators, read and written here (likewise)
    cues.py     markers (or a cue sheet) -> cues: prompt, category, seed, record range
    deliver.py  the timeline back: one audio track per category, each stem at its record time
    command.py  the command line: cues -> batch jobs (runtime/service/batch.py) -> stems ->
                timeline

Times are exact: frames at the cut's rate (a Fraction: 30000/1001 for 29.97) counted from the
timeline's start, whose timecode the cut carries.
"""
