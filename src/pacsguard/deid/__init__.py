"""De-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile and its
options, with keyed pseudonyms, for files (``pacsguard deid``) and store-and-forward routes
(the ``deidentify`` object check)."""
