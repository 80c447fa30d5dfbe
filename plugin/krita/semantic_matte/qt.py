"""The only module that imports Qt: PyQt5 today (Krita 5), PyQt6 for Krita 6 (a one-line change here).

Krita 6 embeds PyQt6 and refuses imports of the wrong binding, so the rest of the plug-in imports
Qt names from here only.
"""

from __future__ import annotations

try:  # Krita 6.x
    from PyQt6.QtCore import QObject, Qt, QThread, QTimer, pyqtSignal  # type: ignore[import-not-found]
    from PyQt6.QtGui import QColor, QPalette  # type: ignore[import-not-found]
    from PyQt6.QtWidgets import (  # type: ignore[import-not-found]
        QApplication,
        QCheckBox,
        QComboBox,
        QDialog,
        QDialogButtonBox,
        QFormLayout,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QMessageBox,
        QProgressBar,
        QPushButton,
        QSpinBox,
        QVBoxLayout,
        QWidget,
    )

    QT_MAJOR = 6
except ImportError:  # Krita 5.x
    from PyQt5.QtCore import QObject, Qt, QThread, QTimer, pyqtSignal
    from PyQt5.QtGui import QColor, QPalette
    from PyQt5.QtWidgets import (
        QApplication,
        QCheckBox,
        QComboBox,
        QDialog,
        QDialogButtonBox,
        QFormLayout,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QMessageBox,
        QProgressBar,
        QPushButton,
        QSpinBox,
        QVBoxLayout,
        QWidget,
    )

    QT_MAJOR = 5

__all__ = [
    "QT_MAJOR",
    "QApplication",
    "QCheckBox",
    "QColor",
    "QComboBox",
    "QDialog",
    "QDialogButtonBox",
    "QFormLayout",
    "QHBoxLayout",
    "QLabel",
    "QLineEdit",
    "QMessageBox",
    "QObject",
    "QPalette",
    "QProgressBar",
    "QPushButton",
    "QSpinBox",
    "QThread",
    "QTimer",
    "QVBoxLayout",
    "QWidget",
    "Qt",
    "pyqtSignal",
]
