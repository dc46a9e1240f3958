from rag_core.sentences import split_sentences


def test_a_hard_wrapped_paragraph_is_split_into_whole_sentences():
    text = (
        "The platform keeps a cache of vectors keyed by\n"
        "the model version and the hash of each chunk text, so a chunk that did not change is never\n"
        "embedded twice.\n"
        "When one percent of the documents change, only their chunks are sent to the model."
    )
    assert split_sentences(text) == [
        "The platform keeps a cache of vectors keyed by the model version and the hash of each chunk text, so a "
        "chunk that did not change is never embedded twice.",
        "When one percent of the documents change, only their chunks are sent to the model.",
    ]


def test_a_full_stop_without_a_space_still_ends_a_sentence():
    text = (
        "Obesity rates rose until 2015.In developed countries the rate then fell.The S100A9 protein binds "
        "with CD33.These 2 proteins form a complex."
    )
    assert split_sentences(text) == [
        "Obesity rates rose until 2015.",
        "In developed countries the rate then fell.",
        "The S100A9 protein binds with CD33.",
        "These 2 proteins form a complex.",
    ]


def test_abbreviations_and_initials_do_not_end_a_sentence():
    text = "Some vectors, e.g. those of Fig. 2 in the U.S. study, were cached. Others were not."
    assert split_sentences(text) == [
        "Some vectors, e.g. those of Fig. 2 in the U.S. study, were cached.",
        "Others were not.",
    ]


def test_a_heading_line_and_paragraphs_stay_apart_from_the_prose():
    text = (
        "Embedding cache and incremental builds\n"
        "Embedding is the slowest step of an index build.\n\n"
        "A second paragraph without a full stop\n\n"
        "The vectors are stored by\nDagster in the cache."
    )
    assert split_sentences(text) == [
        "Embedding cache and incremental builds",
        "Embedding is the slowest step of an index build.",
        "A second paragraph without a full stop",
        "The vectors are stored by Dagster in the cache.",
    ]
