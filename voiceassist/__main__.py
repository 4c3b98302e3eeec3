from voiceassist.cli import main

raise SystemExit(main())
