"""Retry policies and the policy file: parsing, checks that name what to fix, pattern choice, backoff."""

from __future__ import annotations

import pytest

from geartrain.server.policy import PolicyError, PolicySet, RetryPolicy, load_policy_file, parse_policy_text

EXAMPLE = '''
[functions."resize_*"]
max_attempts = 5
backoff_initial = 2
backoff_factor = 3
backoff_max = 30
jitter = 0.5
retry_on = ["fail", "timeout"]

[functions."resize_thumb"]
max_attempts = 2

[functions."*"]
max_attempts = 1

[[schedules]]
name = "nightly"
function = "report"
cron = "0 3 * * *"
data = "all"
unique = "nightly"
priority = "high"
'''


def test_policy_file_is_read(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(EXAMPLE)
    loaded = load_policy_file(path)
    resize = loaded.policies.for_function(b"resize_big")
    assert resize == RetryPolicy(5, 2.0, 3.0, 30.0, 0.5, ("fail", "timeout"))
    assert loaded.policies.for_function(b"resize_thumb").max_attempts == 2  # the exact name wins
    assert loaded.policies.for_function(b"other").max_attempts == 1
    [schedule] = loaded.schedules
    assert (schedule.name, schedule.function, schedule.cron.text, schedule.data, schedule.unique,
            schedule.priority) == ("nightly", b"report", "0 3 * * *", b"all", b"nightly", 0)


def test_no_policy_for_unmatched_functions():
    assert PolicySet({"a*": RetryPolicy()}).for_function(b"b") is None


def test_backoff_grows_by_the_factor_up_to_the_ceiling():
    policy = RetryPolicy(max_attempts=10, backoff_initial=1, backoff_factor=2, backoff_max=5)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_only_shortens_the_wait_by_its_fraction():
    policy = RetryPolicy(backoff_initial=10, jitter=0.25)
    assert policy.delay(1, rand=lambda: 0.0) == 10
    assert policy.delay(1, rand=lambda: 1.0) == 7.5


@pytest.mark.parametrize(("text", "fragment"), [
    ('[functions."a"]\nmax_attempts = 0', "max_attempts"),
    ('[functions."a"]\nbackoff_factor = 0.5', "backoff_factor"),
    ('[functions."a"]\njitter = 2', "jitter"),
    ('[functions."a"]\nretry_on = ["explode"]', "explode"),
    ('[functions."a"]\nmax_tries = 3', "max_tries"),
    ('[functions."a"]\nbackoff_initial = "soon"', "backoff_initial"),
    ('[functions."a"]\nmax_attempts = true', "max_attempts"),
    ('[general]\nx = 1', "general"),
    ('[[schedules]]\nname = "n"\nfunction = "f"\ncron = "* 25 * * *"', "hour"),
    ('[[schedules]]\nname = "n"\nfunction = "f"', "cron"),
    ('[[schedules]]\nname = "n"\nfunction = "f"\ncron = "* * * * *"\npriority = "urgent"', "priority"),
    ('[[schedules]]\nname = "n"\nfunction = "f"\ncron = "* * * * *"\n'
     '[[schedules]]\nname = "n"\nfunction = "g"\ncron = "* * * * *"', "two schedules"),
    ("[functions", "policy file"),
])
def test_bad_policy_files_say_what_to_fix(text, fragment):
    with pytest.raises(PolicyError) as caught:
        parse_policy_text(text)
    assert fragment in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy_file(tmp_path / "absent.toml")


def test_set_from_admin_words_changes_only_the_given_keys():
    policies = PolicySet({"img_*": RetryPolicy(max_attempts=4, backoff_initial=3)})
    assert policies.for_function(b"img_x").max_attempts == 4
    updated = policies.set("img_*", {"max_attempts": "6", "retry_on": "fail,exception"})
    assert updated == RetryPolicy(6, 3.0, 2.0, 300.0, 0.0, ("fail", "exception"))
    assert policies.for_function(b"img_x") is updated  # the cache was cleared
    with pytest.raises(PolicyError, match="jitter"):
        policies.set("img_*", {"jitter": "x"})
    assert "max_attempts=6\tbackoff_initial=3" in updated.describe()
