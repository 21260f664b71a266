"""Reads TensorBoard event files with TensorBoard's own reader and prints the scalars.

Usage: read_tensorboard.py LOGDIR
Prints one JSON object: {"tag": [[step, value], ...], ...} as TensorBoard's
EventAccumulator loads them (including its purge of events that a resumed run
redid). Used by tests/report.rs as the real client of `famix train --tensorboard`.
"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main():
    acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
