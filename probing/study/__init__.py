"""A study: its options (StudyConfig), its results folder (StudyResult), and the Study that runs it."""
