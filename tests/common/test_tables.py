from common.tables import format_table


def test_columns_fit_their_widest_cell_names_left_numbers_right():
    text = format_table([("decode", 12.5, "x"), ("end to end", 3, "yy")], ("stage", "clips/s", "n"), title="bench")
    assert text.splitlines() == [
        "bench",
        "stage       clips/s   n",
        "----------  -------  --",
        "decode         12.5   x",
        "end to end        3  yy",
    ]


def test_alignment_per_column_and_no_trailing_spaces():
    text = format_table([("a", "long value"), ("bbb", "v")], align="<<")
    assert text.splitlines() == ["a    long value", "bbb  v"]
