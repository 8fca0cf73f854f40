"""The paper's comparison (sections 2.1 and 3): four slice classifiers, weak against strong annotation.

:mod:`.networks` builds DenseNet121, InceptionResNetV2, MobileNetV2 and VGG19 on the four-channel input,
:mod:`.train` trains each on the ensemble's cross-validation folds (``ich-model baselines``) and
:mod:`.report` compares them with the ensemble's out-of-fold records. Each finished (fold, architecture,
mode) keeps its out-of-fold records under ``training/baselines/<run name>/`` (committed).
"""
