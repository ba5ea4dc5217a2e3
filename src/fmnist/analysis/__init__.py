"""Analysis of trained models: Grad-CAM, embeddings, calibration, training dynamics, mistakes.

Every function here is a pure computation on tensors, arrays or plain dicts; the report
(fmnist.report) turns the results into tables, figures and prose.
"""
