"""Where reports and alerts leave the process: MQTT, Apprise notifications, the console."""
