"""Independent counts the tests compare the compiler's reports with."""

import numpy as np


def blocked_macs(cm):
    """MACs the packed kernels of ``cm`` execute: the model's, plus those of channels
    zero-padded to the target's dot block and, where depthwise convs (or convs of a one-quad
    input: the RGB image, ``column_pairs``) take window columns in pairs, of the zero-weight
    phantom column of an odd kernel width; where a conv reads the image as a byte stream
    (``pixel_stream``), of a window row's bytes rounded up to the dot's depth (counted from
    the graph, not from the kernels)."""
    from f8tvm.schedules import dot_intrin

    dot = dot_intrin(cm.target.dot)

    def up(n, b):
        return -(-n // b) * b

    total = 0
    for n in cm.graph.layers():
        out = int(np.prod(n.shape[2:])) if n.op == "conv2d" else 1
        o, i = n.weight.shape[:2]
        k = int(np.prod(n.weight.shape[2:]))
        if n.op == "dense":  # a 1x1 conv of the (N, I, 1, 1) map
            blk = dot.lanes if i >= dot.lanes else up(i, dot.depth)
            total += up(o, dot.lanes) * up(i, blk)
        elif n.attrs["groups"] == 1:
            blk = dot.lanes if i >= dot.lanes else up(i, dot.depth)
            kh, kw = n.weight.shape[2:]
            if (dot.spec.pixel_stream and i < dot.depth and kw > 1
                    and tuple(n.attrs["dilation"]) == (1, 1)):
                # the image read as bytes: a window row's kw * i bytes, depth at a time
                total += up(o, dot.lanes) * kh * up(kw * i, dot.depth) * out
                continue
            if (dot.spec.column_pairs and blk == dot.depth and kw > 1
                    and n.attrs["dilation"][1] == 1):
                k = kh * up(kw, 2)
            total += up(o, dot.lanes) * up(i, blk) * k * out
        else:  # depthwise
            kh, kw = n.weight.shape[2:]
            if dot.pair_taps and kw > 1 and n.attrs["dilation"][1] == 1:
                kw = up(kw, dot.spec.tap_group)
            total += up(o, dot.lanes) * kh * kw * out
    return total
