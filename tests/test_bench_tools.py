"The shared benchmark tools: one step timer for every TRL arm."

from alignbook.bench import step_timer


def test_step_timer_records_each_step():
    times = []
    cb = step_timer(times)
    for _ in range(3):
        cb.on_step_begin(None, None, None)
        cb.on_step_end(None, None, None)
    assert len(times) == 3 and all(t >= 0 for t in times)
