"""The per-run cache of Jinja's compiled templates (rampart.jinja_code_cache), through ansible-core's own Templar:
every template renders exactly as without the cache, the second time from the cache, and a damaged cache file is
compiled again and replaced."""

from __future__ import annotations

import os
import stat

import jinja2
import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from rampart import jinja_code_cache

VARIABLES = {"name": "db01", "ports": [5432, 9187, 22], "flag": "yes", "path": "C:\\temp\\x"}
# Plain, filters, a conditional (an expression), backslashes in an expression (ansible-core escapes them), a block,
# and a template that sets its own delimiters (another environment: it must not share a key with the plain ones).
TEMPLATES = [
    ("template", "{{ name }}.example"),
    ("template", "{{ ports | map('int') | select('lt', 9000) | list | to_json }}"),
    ("template", "{{ 'a\\tb' }}|{{ path }}"),
    ("template", "{% for p in ports | sort %}{{ p }};{% endfor %}"),
    ("template", "#jinja2: variable_start_string:'[%', variable_end_string:'%]'\n[% name %] {{ name }}"),
    ("conditional", "flag | bool and 22 in ports"),
    ("conditional", "name is match('db[0-9]+')"),
]


def render(kind: str, source: str) -> object:
    templar = Templar(loader=DataLoader(), variables=VARIABLES)
    if kind == "conditional":
        return templar.evaluate_conditional(trust_as_template(source))
    return templar.template(trust_as_template(source))


@pytest.fixture
def counted_compiles(tmp_path, monkeypatch):
    """Install the cache in tmp_path over a jinja2 whose compile() counts its calls."""
    calls = []
    original = jinja2.Environment.compile

    def counting(self, source, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(source)
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    uninstall = jinja_code_cache.install(str(tmp_path / "jinja-code"))
    yield tmp_path / "jinja-code", calls
    uninstall()


def test_renders_as_without_the_cache_and_the_second_time_from_it(counted_compiles):
    directory, calls = counted_compiles
    expected = []
    for kind, source in TEMPLATES:
        expected.append(render(kind, source))
    first_compiles = len(calls)
    assert first_compiles >= len(TEMPLATES)
    files = sorted(os.listdir(directory))
    assert len(files) >= len(TEMPLATES)  # one per distinct input: the delimiters template is not merged with another
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    again = [render(kind, source) for kind, source in TEMPLATES]
    assert again == expected
    assert len(calls) == first_compiles, "the second rendering compiled again instead of reading the cache"
    assert sorted(os.listdir(directory)) == files


def test_results_match_jinja_without_any_cache(tmp_path):
    plain = [render(kind, source) for kind, source in TEMPLATES]
    uninstall = jinja_code_cache.install(str(tmp_path / "c"))
    try:
        cold = [render(kind, source) for kind, source in TEMPLATES]
        warm = [render(kind, source) for kind, source in TEMPLATES]
    finally:
        uninstall()
    assert plain == cold == warm
    assert plain[0] == "db01.example" and plain[1] == "[5432, 22]" and plain[5] is True and plain[6] is True
    assert plain[2] == "a\\tb|C:\\temp\\x"  # ansible-core's backslash escaping kept in the cached code
    assert plain[4] == "db01 {{ name }}"  # the template's own delimiters


def test_a_damaged_cache_file_is_compiled_again_and_replaced(counted_compiles):
    directory, calls = counted_compiles
    kind, source = TEMPLATES[1]
    good = render(kind, source)
    for name in os.listdir(directory):
        (directory / name).write_bytes(b"\x00 not marshal")
    compiles = len(calls)
    assert render(kind, source) == good
    assert len(calls) > compiles  # the damaged file was not trusted
    calls.clear()
    assert render(kind, source) == good and not calls  # and it was replaced by a good one


def test_a_syntax_error_is_raised_as_before_and_nothing_is_cached(counted_compiles):
    directory, _calls = counted_compiles
    from ansible.errors import AnsibleTemplateError

    with pytest.raises(AnsibleTemplateError):
        render("template", "{{ name | }}")
    assert os.listdir(directory) == []


def test_installing_twice_keeps_one_cache(tmp_path):
    first = jinja_code_cache.install(str(tmp_path / "one"))
    try:
        second = jinja_code_cache.install(str(tmp_path / "two"))
        second()  # a no-op
        render(*TEMPLATES[0])
        assert os.listdir(tmp_path / "one") and not (tmp_path / "two").exists()
    finally:
        first()
    assert not getattr(jinja2.Environment.compile, "rampart_cache", None)


def test_one_source_under_two_compile_settings_gets_two_entries(tmp_path):
    """The key holds what the compiler reads besides the source: the same text with other delimiters, or with
    ansible-core's backslash escaping off, must not be served the other's code."""
    body = "[% name %] {{ name }}|{{ 'a\\tb' }}"
    uninstall = jinja_code_cache.install(str(tmp_path / "c"))
    try:
        templar = Templar(loader=DataLoader(), variables=VARIABLES)
        plain = templar.template(trust_as_template(body))
        other_delimiters = templar.template(
            trust_as_template("#jinja2: variable_start_string:'[%', variable_end_string:'%]'\n" + body))
        unescaped = templar.template(trust_as_template(body), escape_backslashes=False)
        assert (plain, other_delimiters) == ("[% name %] db01|a\\tb", "db01 {{ name }}|{{ 'a\\tb' }}")
        assert unescaped == "[% name %] db01|a\tb"  # a real tab: Jinja read the escape itself
        assert len(os.listdir(tmp_path / "c")) == 3
    finally:
        uninstall()
