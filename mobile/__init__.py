"""Mobile bundles: the exported graphs as ONNX Runtime's ORT format for its Android and iOS builds.

``moebius-edge bundle`` (``bundle.build_bundle``) turns one precision of a models folder into a
folder a device app embeds: the three graphs with batch 1 and every shape static at the native
size (``static``), converted to ``.ort`` by ONNX Runtime's own converter in a child process
(``ort_tools``), behind a parity gate against the source graphs; one ``required_operators.config``
for a reduced-operator ONNX Runtime build; ``bundle.json``, everything the app must know to drive
the graphs (docs/mobile.md); and the execution-provider readiness report (``report``,
``ep_probe``, ``xnnpack_ops``).

Needs the ``mobile`` extra (onnx); never imports torch. ``onnxruntime.tools`` is only ever imported
in child processes: it imports torch whenever torch is installed, and its usability checker
configures logging at import.
"""
