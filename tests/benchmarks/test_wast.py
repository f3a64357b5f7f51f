"""The .wast parser: command forms, values, string escapes, errors with line numbers, and fuzzing."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import _wast as W
from benchmarks._wast_sexpr import Atom, List, String, WastSyntaxError, decode_string, parse, render
from benchmarks._wast_values import Either, LanePattern, NanPattern, Num, Ref, RefPattern, V128, float_bits


def one(text: str):
    (cmd,) = W.parse_script(text, "t.wast")
    return cmd


# --- commands ----------------------------------------------------------------

def test_text_module_keeps_its_source_and_compiles():
    cmd = one('(module $m (func (export "f") (result i32) (i32.const 7)))  ;; trailing comment')
    assert (cmd.name, cmd.form, cmd.definition) == ("$m", "text", False)
    assert cmd.source == '(module (func (export "f") (result i32) (i32.const 7)))'
    wasmtime.Module(wasmtime.Engine(), wasmtime.wat2wasm(cmd.source))


def test_binary_module_decodes_escapes_and_joins_strings():
    cmd = one('(module binary "\\00asm" "\\01\\00\\00\\00")')
    assert cmd.form == "binary" and cmd.source == b"\x00asm\x01\x00\x00\x00"


def test_quote_module_joins_its_strings_into_module_text():
    cmd = one('(module $q quote "(func" " (export \\"f\\"))")')
    assert cmd.form == "quote" and cmd.name == "$q"
    assert cmd.source == '(module (func  (export "f")))'


def test_module_definition_and_instance():
    cmds = W.parse_script("(module definition $M (memory 1))\n(module instance $I $M)")
    assert cmds[0].definition and cmds[0].name == "$M" and cmds[0].source == "(module (memory 1))"
    assert cmds[1] == W.Instance(2, "$I", "$M")


def test_register_invoke_get():
    cmds = W.parse_script('(register "lib" $m)\n(invoke $m "f" (i32.const -1))\n(get "g")')
    assert cmds[0] == W.Register(1, "lib", "$m")
    assert cmds[1] == W.Action(2, "invoke", "$m", "f", (Num("i32", 0xFFFFFFFF),))
    assert cmds[2] == W.Action(3, "get", None, "g", ())


def test_assertions_of_every_kind():
    text = "\n".join([
        '(assert_return (invoke "f" (i64.const 1)) (i64.const 2) (f32.const nan:canonical))',
        '(assert_trap (invoke "f") "unreachable")',
        '(assert_trap (module (func unreachable) (start 0)) "unreachable")',
        '(assert_exhaustion (invoke "f") "call stack exhausted")',
        '(assert_exception (invoke "throw"))',
        '(assert_invalid (module (func (result i32))) "type mismatch")',
        '(assert_malformed (module quote "(func") "unexpected end")',
        '(assert_unlinkable (module (import "x" "y" (func))) "unknown import")',
        '(assert_uninstantiable (module binary "") "x")',
    ])
    cmds = W.parse_script(text)
    assert cmds[0].expected == (Num("i64", 2), NanPattern("f32", "canonical"))
    kinds = [(c.kind, type(c.target).__name__) for c in cmds[1:]]
    assert kinds == [("trap", "Action"), ("uninstantiable", "Module"), ("exhaustion", "Action"),
                     ("exception", "Action"), ("invalid", "Module"), ("malformed", "Module"),
                     ("unlinkable", "Module"), ("uninstantiable", "Module")]
    assert cmds[1].message == "unreachable" and [c.line for c in cmds] == list(range(1, 10))


def test_unknown_commands_are_skipped_with_a_reason():
    cmds = W.parse_script('(module (memory 1))\n(thread $t (invoke "f"))\n(wait $t)')
    assert [type(c) for c in cmds] == [W.Module, W.Skip, W.Skip]
    assert cmds[1].head == "thread" and "thread" in cmds[1].reason


def test_bare_module_fields_are_one_inline_module_and_annotations_are_dropped():
    (cmd,) = W.parse_script('(func) (memory 0) (func (export "f"))')
    assert cmd.source == '(module (func) (memory 0) (func (export "f")))'
    cmd = one('((@a) module (@a) $m (memory 1))')
    assert cmd.name == "$m"


def test_confusing_unicode_in_strings_is_escaped_for_the_text_parser():
    cmd = one('(module (func (export "\u202e") (result i32) (i32.const 1)))')
    assert cmd.source.isascii() and "\\e2\\80\\ae" in cmd.source
    wasmtime.wat2wasm(cmd.source)


# --- values --------------------------------------------------------------------

@pytest.mark.parametrize("text,ftype,bits", [
    ("1.000000059604644775390625", "f32", 0x3F800000),       # the tie rounds to even
    ("1.00000005960464477539062500001", "f32", 0x3F800001),  # via f64 it would round twice, to 1.0
    ("0x1p-149", "f32", 0x00000001),
    ("-0x1.fffffep127", "f32", 0xFF7FFFFF),
    ("1e39", "f32", 0x7F800000),
    ("0x1.8p3", "f64", 0x4028000000000000),
    ("-0.0", "f64", 0x8000000000000000),
    ("nan:0x200000", "f32", 0x7FA00000),
    ("-nan", "f32", 0xFFC00000),
    ("+inf", "f64", 0x7FF0000000000000),
    ("1_000.5", "f64", 0x408F440000000000),
    ("0x1P+1", "f64", 0x4000000000000000),
    ("4e-324", "f64", 0x0000000000000001),
    ("1e999999999", "f32", 0x7F800000),   # the exponent is bounded, not expanded
    ("0x1p-99999999", "f64", 0),
])
def test_float_literals_round_exactly(text, ftype, bits):
    assert float_bits(text, ftype, 1) == bits


def test_integer_literals_wrap_and_refuse_out_of_range():
    assert one('(invoke "f" (i32.const -0x8000_0000) (i64.const 0xffffffffffffffff))').args == (
        Num("i32", 0x80000000), Num("i64", 2**64 - 1))
    with pytest.raises(WastSyntaxError, match="out of range"):
        W.parse_script('(invoke "f" (i32.const 4294967296))')


def test_v128_in_every_lane_shape():
    args = one('(invoke "f" (v128.const i8x16 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1) (v128.const i16x8 1 2 3 4 5 6 7 -1)'
               ' (v128.const i32x4 1 0 0 0) (v128.const i64x2 -1 2) (v128.const f32x4 1 -0 nan inf)'
               ' (v128.const f64x2 0x1p0 -1))').args
    assert args[0] == V128(b"\xff" + bytes(14) + b"\x01")
    assert args[1].data[:2] == b"\x01\x00" and args[1].data[14:] == b"\xff\xff"
    assert args[2] == V128((1).to_bytes(16, "little"))
    assert args[3].data == b"\xff" * 8 + (2).to_bytes(8, "little")
    assert args[4].data == bytes.fromhex("0000803f" "00000080" "0000c07f" "0000807f")
    assert args[5].data == bytes.fromhex("000000000000f03f" "000000000000f0bf")


def test_result_patterns():
    (pat,) = one('(assert_return (invoke "f") (v128.const f32x4 nan:canonical 1 nan:arithmetic 0))').expected
    assert isinstance(pat, LanePattern) and pat.lanes[0] == NanPattern("f32", "canonical") and pat.lanes[1] == 0x3F800000
    exp = one('(assert_return (invoke "f") (ref.null func) (ref.extern 3) (ref.func) (ref.i31) (ref.struct)'
              ' (ref.array) (ref.eq) (ref.any) (ref.null) (ref.host 5) (either (i32.const 1) (i32.const 2)))').expected
    assert exp == (Ref("funcref", None), Ref("externref", 3), RefPattern("func"), RefPattern("i31"),
                   RefPattern("struct"), RefPattern("array"), RefPattern("eq"), RefPattern("any"),
                   RefPattern("null"), Ref("anyref", 5), Either((Num("i32", 1), Num("i32", 2))))
    assert one('(invoke "f" (ref.null extern) (ref.null exn) (ref.null none))').args == (
        Ref("externref", None), Ref("exnref", None), Ref("anyref", None))


@pytest.mark.parametrize("bad,message", [
    ('(invoke "f" (f32.const nan:canonical))', "NaN pattern"),
    ('(invoke "f" (v128.const i32x4 1 2))', "needs 4 lanes"),
    ('(invoke "f" (ref.null nothing))', "heap type"),
    ('(invoke "f" (f64.const 0x1.xp1))', "bad hex float"),
    ('(invoke "f" (i32.const one))', "bad integer"),
    ('(invoke "f" (f32.const nan:0x800000))', "payload out of range"),
    ('(assert_return (invoke "f") (i32.add))', "unsupported value form"),
])
def test_bad_values_are_typed_errors(bad, message):
    with pytest.raises(WastSyntaxError, match=message):
        W.parse_script(bad)


# --- strings and errors -------------------------------------------------------

def test_string_escapes():
    assert decode_string(r"a\t\n\r\"\'\\\00\ff\u{41}\u{1F600}\u{10_FFFF}", 1) == (
        b"a\t\n\r\"'\\\x00\xffA" + "\U0001F600".encode() + "\U0010FFFF".encode())
    for bad in (r"\q", r"\u{D800}", r"\u{}", "\\", r"\u{110000}", "\x01"):
        with pytest.raises(WastSyntaxError):
            decode_string(bad, 1)


@pytest.mark.parametrize("text,line,message", [
    ("(module)\n\n(invoke \"f\"", 3, "unclosed"),
    ("(module)\n)", 2, "unbalanced"),
    ("\n(module binary \"abc)", 2, "unterminated string"),
    ("(module)\n(; open (; nested ;)\n", 2, "unterminated block comment"),
    ("(module)\n\n\n(register $m)", 4, "name string"),
    ("(module)\n(invoke 7)", 2, "export name"),
    ("(module)\n(assert_return)", 2, "needs an action"),
    ("(module)\n(assert_invalid (invoke \"f\") \"x\")", 2, r"needs a \(module"),
    ("(module)\n(assert_trap (invoke \"f\"))", 2, "message"),
    ("stray", 1, "outside any form"),
    ("(module binary 1)", 1, "only strings"),
])
def test_errors_name_file_and_line(text, line, message):
    with pytest.raises(WastSyntaxError, match=message) as info:
        W.parse_script(text, "x.wast")
    assert info.value.line == line and info.value.file == "x.wast"
    assert str(info.value).startswith(f"x.wast:{line}: ")


def test_comments_and_lines_are_tracked():
    text = ';; c\n(; block\n (; nested ;) ;)\n(module) (; x ;) (invoke "a;;b")\n'
    cmds = W.parse_script(text)
    assert [c.line for c in cmds] == [4, 4] and cmds[1].field == "a;;b"


# --- property tests -------------------------------------------------------------

_atoms = st.from_regex(r"[a-z$0-9][a-z0-9_.:$+-]{0,8}", fullmatch=True)
_trees = st.recursive(
    st.one_of(_atoms.map(lambda t: ("atom", t)), st.binary(max_size=8).map(lambda b: ("str", b))),
    lambda kids: st.lists(kids, max_size=5).map(lambda xs: ("list", xs)), max_leaves=30)


def _node(tree):
    kind, value = tree
    if kind == "atom":
        return Atom(value, 0, 0, 0)
    if kind == "str":
        return String(value, 0, 0, 0)
    return List(tuple(_node(x) for x in value), 0, 0, 0)


def _shape(node):
    if isinstance(node, Atom):
        return ("atom", node.text)
    if isinstance(node, String):
        return ("str", node.data)
    return ("list", [_shape(x) for x in node.items])


@settings(max_examples=300, deadline=None)
@given(st.lists(_trees.map(lambda t: ("list", [t])), min_size=1, max_size=4))
def test_splitter_round_trips_rendered_trees(trees):
    text = "\n ;; comment\n".join(render(_node(t)) for t in trees)
    assert [_shape(n) for n in parse(text)] == trees


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(list('()";\\ \nab$0x.\t') + ["(;", ";)", ";;", "nan", "i32.const", "module",
                                                                "invoke", "assert_return", "v128.const", "f32x4"]),
                max_size=60))
def test_splitter_never_crashes_on_wast_like_text(pieces):
    try:
        W.parse_script(" ".join(pieces) if len(pieces) % 2 else "".join(pieces))
    except WastSyntaxError:
        pass


def test_random_bytes_only_give_typed_errors():
    import random

    rng = random.Random(15)
    seeds = [b'(module (func (export "f") (param i32) (result f32) (f32.const 0x1p3)))',
             b'(assert_return (invoke "f" (v128.const f32x4 1 2 3 4)) (either (ref.null func) (ref.i31)))']
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(3000):
        data = bytearray(seeds[i % 2]) if i % 3 else bytearray(rng.randbytes(rng.randrange(1, 64)))
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(data) + 1)
            data[at:at + rng.randrange(3)] = rng.randbytes(rng.randrange(3))
        try:
            W.parse_script(data.decode("utf-8", errors="replace"))
            outcomes["parsed"] += 1
        except WastSyntaxError:
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 100 and outcomes["refused"] > 100, outcomes
