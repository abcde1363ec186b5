"Malformed records of every data format: a DataFormatError naming row/line and field, or a valid dataset."

import io, json, string
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st
from PIL import Image
from alignbook.data import DataFormatError, KINDS, validate_dataset, load_rows, read_jsonl
from alignbook.diffusion.prefs import validate_pickapic, PICKAPIC_COLUMNS

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

text = st.text(alphabet=string.printable + "éü中", max_size=12)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]), "content": text}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.integers()}),
    st.dictionaries(st.sampled_from(["role", "content", "name"]), text, max_size=3),
    text,
    st.none(),
)
value = st.one_of(
    text,
    st.just(""),
    st.just("   "),
    st.lists(message, max_size=3),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.dictionaries(text, text, max_size=2),
)


def record(fields):
    "A record with some of `fields` (possibly missing, possibly extra) holding arbitrary values."
    return st.dictionaries(
        st.sampled_from([*fields, "label", "junk"]), value, min_size=0, max_size=len(fields) + 1
    )


def assert_clean(e: Exception):
    assert isinstance(e, DataFormatError), f"{type(e).__name__}: {e}"
    msg = str(e)
    assert any(w in msg for w in ("row ", "line ", "record ", "field", "column", "empty")), msg


@pytest.mark.parametrize("kind", list(KINDS))
@SETTINGS
@given(data=st.data())
def test_validate_dataset_clean_error_or_valid(kind, data):
    good = {f: "x" for f in KINDS[kind]} | ({"label": True} if kind == "unpaired" else {})
    rows = data.draw(st.lists(st.one_of(st.just(good), record(KINDS[kind]), value), min_size=0, max_size=4))
    try:
        style = validate_dataset(rows, kind)
    except Exception as e:
        assert_clean(e)
    else:
        assert style in ("standard", "conversational")
        assert all(isinstance(r, dict) and set(KINDS[kind]) <= set(r) for r in rows)


@pytest.mark.parametrize("kind", list(KINDS))
@SETTINGS
@given(data=st.data())
def test_jsonl_files_clean_error_or_valid(kind, data, tmp_path):
    good = {f: "x" for f in KINDS[kind]} | ({"label": True} if kind == "unpaired" else {})
    rows = data.draw(st.lists(st.one_of(st.just(good), record(KINDS[kind])), min_size=0, max_size=4))
    lines = [json.dumps(r).encode() for r in rows]
    if lines and data.draw(st.booleans()):  # damage: cut the last line, or put bytes that are not UTF-8
        cut = data.draw(st.integers(0, len(lines[-1])))
        lines[-1] = lines[-1][:cut] + data.draw(st.sampled_from([b"", b"\xff\xfe", b"\xe9"]))
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(lines))
    try:
        ds = load_rows(p)
        validate_dataset(ds, kind)
    except Exception as e:
        assert_clean(e)
        assert isinstance(e, DataFormatError)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(raw, tmp_path):
    p = tmp_path / "raw.jsonl"
    p.write_bytes(raw)
    try:
        read_jsonl(p)
    except Exception as e:
        assert isinstance(e, DataFormatError) and str(p) in str(e), f"{type(e).__name__}: {e}"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
image_value = st.one_of(st.just(PNG), st.binary(max_size=16), text, st.none(), st.integers())
label = st.one_of(
    st.sampled_from([0, 0.5, 1, 1.0, 0.0]), st.floats(allow_nan=True), st.integers(-2, 3), st.none(), text
)


@SETTINGS
@given(data=st.data())
def test_image_preferences_clean_error_or_valid(data):
    from datasets import Dataset

    good = {"jpg_0": PNG, "jpg_1": PNG, "label_0": 1, "label_1": 0, "caption": "a digit"}
    field = {
        "jpg_0": image_value,
        "jpg_1": image_value,
        "label_0": label,
        "label_1": label,
        "caption": st.one_of(text, st.none(), st.integers()),
    }
    rec = st.fixed_dictionaries({}, optional=field)
    rows = data.draw(st.lists(st.one_of(st.just(good), rec), min_size=1, max_size=4))
    try:
        ds = Dataset.from_list(rows)
    except Exception:
        return  # Arrow refuses mixed column types; load_rows turns that into a DataFormatError
    try:
        out = validate_pickapic(ds)
    except Exception as e:
        assert_clean(e)
    else:
        assert set(PICKAPIC_COLUMNS) <= set(out.column_names)
