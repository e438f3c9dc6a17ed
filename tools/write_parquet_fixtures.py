#!/usr/bin/env python3
"""Writes tests/fixtures/parquet/: small Parquet files by pyarrow (an independent writer) of the
same texts in the layouts prepro's reader must handle (src/formats/parquet.rs), and texts.json,
what each file's text column holds, row by row (null where a row has none).

    pip install pyarrow==17.0.0 && python3 tools/write_parquet_fixtures.py

pyarrow 17 writes the same bytes for the same input, so a rerun reproduces the files.
"""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parquet")

# 40 documents: repeats (for the dictionary), an empty one, non-ASCII, one long enough to span pages
TEXTS = []
for i in range(40):
    if i % 7 == 3:
        TEXTS.append("ROMEO: But soft, what light through yonder window breaks?")
    elif i == 5:
        TEXTS.append("")
    elif i == 11:
        TEXTS.append("Ünïcödé: 日本語のテキスト, émigré café — \"quoted\"\n\ttabbed")
    elif i == 17:
        TEXTS.append(" ".join(f"word{k}" for k in range(300)))
    else:
        TEXTS.append(f"Document {i}: the quality of mercy is not strained {i * i}.")
NULLS = [t if i % 6 != 2 else None for i, t in enumerate(TEXTS)]


def write(name, table, **kw):
    pq.write_table(table, os.path.join(OUT, name), **kw)


def main():
    os.makedirs(OUT, exist_ok=True)
    text = pa.array(TEXTS, pa.string())
    required = pa.schema([pa.field("text", pa.string(), nullable=False)])
    expect = {}

    # PLAIN values, snappy, data pages v1
    write("plain_snappy.parquet", pa.table({"text": text}), compression="snappy",
          use_dictionary=False, data_page_version="1.0")
    expect["plain_snappy.parquet"] = TEXTS
    # dictionary (RLE_DICTIONARY), zstd, data pages v2
    write("dict_zstd_v2.parquet", pa.table({"text": text}), compression="zstd",
          use_dictionary=True, data_page_version="2.0")
    expect["dict_zstd_v2.parquet"] = TEXTS
    # nulls, gzip, row groups of 7 rows and small pages: many of both
    write("nulls_gzip_groups.parquet", pa.table({"text": pa.array(NULLS, pa.string())}),
          compression="gzip", row_group_size=7, data_page_size=256, use_dictionary=True,
          data_page_version="1.0")
    expect["nulls_gzip_groups.parquet"] = NULLS
    # the same with pages v2 and no dictionary
    write("nulls_v2_plain.parquet", pa.table({"text": pa.array(NULLS, pa.string())}),
          compression="snappy", row_group_size=16, data_page_size=300, use_dictionary=False,
          data_page_version="2.0")
    expect["nulls_v2_plain.parquet"] = NULLS
    # a required (non-nullable) column, uncompressed
    write("required_none.parquet", pa.table({"text": text}, schema=required), compression="none",
          use_dictionary=False)
    expect["required_none.parquet"] = TEXTS
    # other columns before it: an int, a struct of two leaves, then the text (its 4th leaf)
    others = pa.table({
        "id": pa.array(range(len(TEXTS)), pa.int64()),
        "meta": pa.array([{"source": f"s{i % 3}", "score": i / 4} for i in range(len(TEXTS))]),
        "text": text,
        "tags": pa.array([["a", "b"][: i % 3] for i in range(len(TEXTS))], pa.list_(pa.string())),
    })
    write("columns.parquet", others, compression="snappy", row_group_size=25)
    expect["columns.parquet"] = TEXTS
    # LZ4 (LZ4_RAW: one block a page)
    write("lz4.parquet", pa.table({"text": text}), compression="lz4")
    expect["lz4.parquet"] = TEXTS
    # DELTA_BYTE_ARRAY (prefixes shared with the value before), pages v1
    write("delta.parquet", pa.table({"text": text}), compression="none", use_dictionary=False,
          column_encoding={"text": "DELTA_BYTE_ARRAY"})
    expect["delta.parquet"] = TEXTS
    # DELTA_LENGTH_BYTE_ARRAY, pages v2, nulls, 320 rows (blocks of 128 lengths), zstd
    many = NULLS * 8
    write("delta_length_many.parquet", pa.table({"text": pa.array(many, pa.string())}),
          compression="zstd", use_dictionary=False, data_page_version="2.0",
          column_encoding={"text": "DELTA_LENGTH_BYTE_ARRAY"})
    expect["delta_length_many.parquet"] = many
    # a footer over 64 KiB, so that the third byte of its length counts: row groups of 8 rows and
    # 40,000 bytes of a dataset's own metadata (pyarrow keeps it twice: as it is, and inside the
    # Arrow schema it stores)
    described = pa.table({"text": text}).replace_schema_metadata({"description": "x" * 40000})
    write("big_footer.parquet", described, compression="snappy", row_group_size=8)
    expect["big_footer.parquet"] = TEXTS
    # refused: the BROTLI codec
    write("brotli.parquet", pa.table({"text": text}), compression="brotli")
    with open(os.path.join(OUT, "texts.json"), "w", encoding="utf-8") as f:
        json.dump(expect, f, ensure_ascii=False, indent=0)
        f.write("\n")
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
